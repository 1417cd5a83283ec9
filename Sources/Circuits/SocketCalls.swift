import CShim
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The two kinds of AF_UNIX socket Cloister uses: packets for transports (the kernel keeps
/// message boundaries, and a packet holds whole frames), a byte stream for the control
/// socket and for client connections in tests.
public enum SocketKind: String, Sendable, CaseIterable {
    case seqpacket
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
    public static func socketPair(_ kind: SocketKind) throws(SystemCallError) -> (FileDescriptor, FileDescriptor) {
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
