import CShim
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// How a transport's socket frames messages.
public enum TransportKind: String, Sendable, CaseIterable {
    /// AF_UNIX SOCK_SEQPACKET: the kernel keeps message boundaries; a packet holds whole
    /// frames (one, or several small ones that were sent close together).
    case seqpacket
    /// A byte stream (AF_UNIX SOCK_STREAM): frames are length-prefixed, and descriptors
    /// travel with the first byte of the frame they belong to.
    case stream

    var socketType: CInt {
        switch self {
        case .seqpacket: return CInt(SOCK_SEQPACKET.rawValue)
        case .stream: return CInt(SOCK_STREAM.rawValue)
        }
    }
}

/// Thin typed wrappers over the socket calls Cloister needs beyond swift-system, one per
/// syscall, each throwing the failing call and its errno.
public enum SocketCalls {
    /// socketpair(2) with SOCK_CLOEXEC. The corresponding C function is `socketpair`.
    public static func socketPair(_ kind: TransportKind) throws(SystemCallError) -> (FileDescriptor, FileDescriptor) {
        var fds: [CInt] = [-1, -1]
        let rc = socketpair(AF_UNIX, kind.socketType | CInt(SOCK_CLOEXEC.rawValue), 0, &fds)
        guard rc == 0 else { throw SystemCallError(call: "socketpair", errno: Errno(rawValue: errno)) }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }

    /// Sends `parts` as one message with `descriptors` attached (SCM_RIGHTS), retrying on
    /// EINTR. MSG_NOSIGNAL: a vanished peer is an EPIPE error, never a SIGPIPE.
    /// Returns the number of bytes sent (less than the total only on a stream socket).
    static func send(_ socket: FileDescriptor, _ iov: UnsafeBufferPointer<iovec>,
                     descriptors: UnsafeBufferPointer<CInt>, nonBlocking: Bool = false) throws(SystemCallError) -> Int {
        let flags = CInt(MSG_NOSIGNAL) | (nonBlocking ? CInt(MSG_DONTWAIT) : 0)
        while true {
            let n = cloister_sendmsg_fds(socket.rawValue, iov.baseAddress, CInt(iov.count),
                                         descriptors.baseAddress, UInt32(descriptors.count), flags)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw SystemCallError(call: "sendmsg", errno: Errno(rawValue: errno))
        }
    }

    struct Received {
        var count: Int
        var descriptors: [CInt]
        var controlTruncated: Bool
    }

    /// recvmsg(2) with MSG_CMSG_CLOEXEC, retrying on EINTR. Every descriptor that arrived is
    /// in the result (or was closed by the shim when more came than `maxDescriptors`).
    /// Used on byte streams (packets are read with `recvmmsg` by `FrameReader`).
    static func receive(_ socket: FileDescriptor, _ iov: UnsafeMutableBufferPointer<iovec>,
                        maxDescriptors: Int) throws(SystemCallError) -> Received {
        let room = max(maxDescriptors, 1)
        return try withUnsafeTemporaryAllocation(of: CInt.self, capacity: room) { (fds) throws(SystemCallError) -> Received in
            var nfds: UInt32 = 0
            var msgFlags: CInt = 0
            var foreign: CInt = 0
            while true {
                let n = cloister_recvmsg_fds(socket.rawValue, iov.baseAddress, CInt(iov.count),
                                             fds.baseAddress, UInt32(room), &nfds, &msgFlags, &foreign, 0)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw SystemCallError(call: "recvmsg", errno: Errno(rawValue: errno))
                }
                return Received(count: n, descriptors: nfds == 0 ? [] : Array(fds[..<Int(nfds)]),
                                controlTruncated: msgFlags & CInt(MSG_CTRUNC) != 0)
            }
        }
    }

    /// setsockopt(SO_RCVTIMEO); zero clears it.
    static func setReceiveTimeout(_ socket: FileDescriptor, milliseconds: Int) throws(SystemCallError) {
        var tv = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        let rc = setsockopt(socket.rawValue, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        guard rc == 0 else { throw SystemCallError(call: "setsockopt(SO_RCVTIMEO)", errno: Errno(rawValue: errno)) }
    }

    /// shutdown(2) of both directions; wakes a thread blocked in recvmsg on the socket.
    static func shutdownBoth(_ socket: FileDescriptor) {
        _ = Glibc.shutdown(socket.rawValue, CInt(SHUT_RDWR))
    }
}

/// A failed system call: its name and errno.
public struct SystemCallError: Error, Sendable, Equatable, CustomStringConvertible {
    public var call: String
    public var errno: Errno
    public init(call: String, errno: Errno) {
        self.call = call
        self.errno = errno
    }
    public var description: String { "\(call): \(errno) (errno \(errno.rawValue))" }
}
