import CShim
import SystemCalls
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

/// The socket calls transports need beyond swift-system, each throwing the failing call and
/// its errno (through `SystemCalls`).
public enum SocketCalls {
    /// socketpair(2) with SOCK_CLOEXEC. The corresponding C function is `socketpair`.
    public static func socketPair(_ kind: TransportKind) throws(SystemCallError) -> (FileDescriptor, FileDescriptor) {
        var fds: [CInt] = [-1, -1]
        _ = try valueOrErrno("socketpair") { socketpair(AF_UNIX, kind.socketType | CInt(SOCK_CLOEXEC.rawValue), 0, &fds) }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }

    /// setsockopt(SO_RCVTIMEO); zero clears it.
    static func setReceiveTimeout(_ socket: FileDescriptor, milliseconds: Int) throws(SystemCallError) {
        var tv = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        _ = try valueOrErrno("setsockopt(SO_RCVTIMEO)") {
            setsockopt(socket.rawValue, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    /// shutdown(2) of both directions; wakes a thread blocked in recvmsg on the socket.
    static func shutdownBoth(_ socket: FileDescriptor) {
        _ = Glibc.shutdown(socket.rawValue, CInt(SHUT_RDWR))
    }
}
