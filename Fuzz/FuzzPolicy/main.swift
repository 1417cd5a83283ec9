import Foundation
import Sandbox
#if !LIBFUZZER
import FuzzReplay
#endif

/// The policy reader on any bytes an operator's file could hold: parsed or refused with an
/// error; what parses, compiles with libseccomp or is refused.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let data = Data(bytes: start, count: count)
    guard let policy = try? Policy.parse(data, source: "fuzz") else { return 0 }
    _ = try? SeccompProgram(policy)
    return 0
}

#if !LIBFUZZER
/// The ordinary build's program: this initializer runs at start (script mode) and replays
/// the files given. A declaration, because even an inactive block must parse as a library.
let replayed: Void = replay(fuzz)
#endif

