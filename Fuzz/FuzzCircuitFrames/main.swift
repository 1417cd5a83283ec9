import CShim
import Circuits
import SystemPackage

#if canImport(Glibc)
import Glibc
#if !LIBFUZZER
import FuzzReplay
#endif
#endif

/// The circuits' receiving side on packets a compromised peer could send: each input is one
/// packet on a real SOCK_SEQPACKET pair, with 0 to 3 real descriptors (the first byte's low
/// bits), read by the transport's `FrameReader`. Whatever the bytes, no trap, and every
/// descriptor that arrived is closed or handed out exactly once (checked by the lowest free
/// descriptor number being the same after the input as before it: libFuzzer itself opens
/// files between inputs, so only the span of one input is compared). Bit 2 of the first byte feeds the rest to the handshake
/// decoder instead.
nonisolated(unsafe) var pair: (send: Int32, receive: Int32) = {
    var fds: [Int32] = [0, 0]
    precondition(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
    return (fds[0], fds[1])
}()
nonisolated(unsafe) var reader = FrameReader(fd: FileDescriptor(rawValue: pair.receive),
                                             limits: FrameLimits(idBytes: 4, maxCircuits: 1 << 20, maxPayload: 64 * 1024, maxDescriptors: 2))

func lowestFreeDescriptor() -> Int32 {
    let probe = dup(0)
    close(probe)
    return probe
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    guard count > 0 else { return 0 }
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    let packet = Array(bytes.dropFirst())
    if bytes[0] & 4 != 0 {
        if let handshake = try? Handshake.decode(packet) {
            precondition((try? Handshake.decode(handshake.encode())) == handshake, "a handshake that does not survive a round trip")
        }
        return 0
    }
    _ = reader.limits  // the pair and the reader first: their descriptors are not the input's
    let lowestFree = lowestFreeDescriptor()
    let descriptorCount = Int(bytes[0] & 3)
    let descriptors = (0..<descriptorCount).map { _ in open("/dev/null", O_RDONLY | O_CLOEXEC) }
    let sent = packet.withUnsafeBytes { body -> Int in
        var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: body.baseAddress), iov_len: body.count)
        return descriptors.withUnsafeBufferPointer {
            cloister_sendmsg_fds(pair.send, &iov, 1, $0.baseAddress, UInt32(descriptorCount), Int32(MSG_DONTWAIT))
        }
    }
    for fd in descriptors { close(fd) }
    guard sent >= 0 else { return 0 }
    var frames: [Frame] = []
    do {
        // An empty packet with no descriptor reads as the end of the stream.
        _ = try reader.readQueued(into: &frames)
    } catch {
        // Refused, as it should be for most inputs.
    }
    frames.removeAll()  // their descriptors close here
    precondition(lowestFreeDescriptor() == lowestFree, "a received descriptor was neither handed out nor closed")
    return 0
}

#if !LIBFUZZER
/// The ordinary build's program: this initializer runs at start (script mode) and replays
/// the files given. A declaration, because even an inactive block must parse as a library.
let replayed: Void = replay(fuzz)
#endif

