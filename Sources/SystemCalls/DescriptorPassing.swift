import CShim

#if canImport(Glibc)
import Glibc
#endif

/// Messages with descriptors attached (SCM_RIGHTS) over a unix socket: the one sender and the
/// one receiver every module uses.
public enum DescriptorPassing {
    /// sendmsg(2) of `iov` with `descriptors`, retrying on EINTR. MSG_NOSIGNAL: a vanished
    /// peer is an EPIPE error, never a SIGPIPE. Returns the bytes sent (less than the total
    /// only on a stream socket).
    public static func send(_ socket: CInt, _ iov: UnsafeBufferPointer<iovec>, descriptors: UnsafeBufferPointer<CInt>,
                            nonBlocking: Bool = false) throws(SystemCallError) -> Int {
        let flags = CInt(MSG_NOSIGNAL) | (nonBlocking ? CInt(MSG_DONTWAIT) : 0)
        return try valueOrErrno("sendmsg") {
            cloister_sendmsg_fds(socket, iov.baseAddress, CInt(iov.count), descriptors.baseAddress, UInt32(descriptors.count), flags)
        }
    }

    public struct Received {
        public var count: Int
        public var descriptors: [CInt]
        /// MSG_CTRUNC: more descriptors were sent than there was room for (the shim closed them).
        public var controlTruncated: Bool
    }

    /// recvmsg(2) with MSG_CMSG_CLOEXEC, retrying on EINTR, with room for `maxDescriptors`.
    /// Every descriptor that arrived is in the result, or was closed by the shim when more
    /// came than there was room for.
    public static func receive(_ socket: CInt, _ iov: UnsafeMutableBufferPointer<iovec>,
                               maxDescriptors: Int) throws(SystemCallError) -> Received {
        let room = max(maxDescriptors, 1)
        return try withUnsafeTemporaryAllocation(of: CInt.self, capacity: room) { (fds) throws(SystemCallError) -> Received in
            var nfds: UInt32 = 0
            var msgFlags: CInt = 0
            var foreign: CInt = 0
            let n = try valueOrErrno("recvmsg") {
                cloister_recvmsg_fds(socket, iov.baseAddress, CInt(iov.count), fds.baseAddress, UInt32(room), &nfds, &msgFlags,
                                     &foreign, 0)
            }
            return Received(count: n, descriptors: nfds == 0 ? [] : Array(fds[..<Int(nfds)]),
                            controlTruncated: msgFlags & CInt(MSG_CTRUNC) != 0)
        }
    }
}

extension DescriptorPassing {
    /// One packet of `bytes` with `descriptors` (on a seqpacket socket, one message).
    public static func sendPacket(_ socket: CInt, _ bytes: [UInt8], descriptors: [CInt] = []) throws(SystemCallError) {
        // The pointer helpers rethrow untyped errors: the typed one travels in a Result.
        try bytes.withUnsafeBytes { raw in
            descriptors.withUnsafeBufferPointer { fds in
                var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress), iov_len: raw.count)
                return withUnsafePointer(to: &iov) { iov in
                    Result { () throws(SystemCallError) in _ = try send(socket, UnsafeBufferPointer(start: iov, count: 1), descriptors: fds) }
                }
            }
        }.get()
    }

    /// The next packet, at most `capacity` bytes, and the descriptors that came with it;
    /// nil at the end of the stream (an empty packet with no descriptor).
    public static func receivePacket(_ socket: CInt, capacity: Int, maxDescriptors: Int) throws(SystemCallError) -> (bytes: [UInt8], descriptors: [CInt])? {
        var buffer = [UInt8](repeating: 0, count: capacity)
        let received = try buffer.withUnsafeMutableBytes { raw in
            var iov = iovec(iov_base: raw.baseAddress, iov_len: raw.count)
            return withUnsafeMutablePointer(to: &iov) { iov in
                Result { () throws(SystemCallError) in try receive(socket, UnsafeMutableBufferPointer(start: iov, count: 1), maxDescriptors: maxDescriptors) }
            }
        }.get()
        if received.count == 0 && received.descriptors.isEmpty { return nil }
        return (Array(buffer[..<received.count]), received.descriptors)
    }
}
