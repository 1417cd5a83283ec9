import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET (a path, or an abstract
/// name written with a leading "@"). Without the variable (not started by systemd with
/// Type=notify) it does nothing.
public enum SystemdNotify {
    @discardableResult
    public static func send(_ state: String) -> Bool {
        guard let raw = getenv("NOTIFY_SOCKET") else { return false }
        let path = String(cString: raw)
        guard path.hasPrefix("/") || path.hasPrefix("@") else { return false }
        let address = SocketAddress.unix(path: path)
        guard let fd = try? address.socket(CInt(SOCK_DGRAM.rawValue)) else { return false }
        defer { close(fd) }
        let sent = try? address.withSockaddr { (p, length) throws(SystemCallError) in
            let bytes = Array(state.utf8)
            return try valueOrErrno("sendto", detail: path) { sendto(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL), p, length) }
        }
        return sent == state.utf8.count
    }
}
