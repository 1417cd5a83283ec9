import Worker
#if !LIBFUZZER
import FuzzReplay
#endif

/// The ClientHello reader before TLS (`ALPNGate`) on any bytes a client sends first: an answer
/// for each, never a read out of bounds; and a prefix of a record that asks for more stays so
/// until the record is whole.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    let verdict = ALPNGate.verdict(bytes)
    if verdict != .needMore, count > 0 {
        // More bytes after a decided record change nothing about it.
        precondition(ALPNGate.verdict(bytes + [0x16, 0x03]) == verdict || bytes.count < 5, "the verdict changed with bytes after the record")
    }
    return 0
}

#if !LIBFUZZER
/// The ordinary build's program: this initializer runs at start (script mode) and replays
/// the files given. A declaration, because even an inactive block must parse as a library.
let replayed: Void = replay(fuzz)
#endif
