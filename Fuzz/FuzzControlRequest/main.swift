import Supervisor
#if !LIBFUZZER
import FuzzReplay
#endif

/// The control socket's request parser on a line a local peer could send: no trap, and what
/// parses names a request the server knows.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count).prefix(64))
    if case .success(let request) = ControlRequest.parse(bytes) {
        switch request {
        case .kick(let session, _), .hangUp(let session): precondition(!session.isEmpty && !session.contains(" "))
        case .drain(let seconds): precondition(seconds.isFinite && seconds >= 0)
        case .status, .workers, .sessions, .upgrade, .recordings: break
        }
    }
    return 0
}

#if !LIBFUZZER
/// The ordinary build's program: this initializer runs at start (script mode) and replays
/// the files given. A declaration, because even an inactive block must parse as a library.
let replayed: Void = replay(fuzz)
#endif

