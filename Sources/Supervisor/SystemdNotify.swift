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
    public static func send(_ state: String) -> Bool { send(state, descriptors: []) }

    /// `state` with `descriptors` attached (SCM_RIGHTS): `FDSTORE=1` hands them to the
    /// service manager's fd store, which gives them back on the next start.
    @discardableResult
    public static func send(_ state: String, descriptors: [FileDescriptor]) -> Bool {
        guard let raw = getenv("NOTIFY_SOCKET") else { return false }
        let path = String(cString: raw)
        guard path.hasPrefix("/") || path.hasPrefix("@") else { return false }
        let address = SocketAddress.unix(path: path)
        guard let fd = try? address.socket(CInt(SOCK_DGRAM.rawValue)) else { return false }
        defer { close(fd) }
        let connected = try? address.withSockaddr { (p, length) throws(SystemCallError) in
            try valueOrErrno("connect", detail: path) { connect(fd, p, length) }
        }
        guard connected != nil else { return false }
        var bytes = Array(state.utf8)
        let fds = descriptors.map(\.rawValue)
        let sent = bytes.withUnsafeMutableBytes { buffer -> Int? in
            var iov = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
            return withUnsafePointer(to: &iov) { vector in
                fds.withUnsafeBufferPointer { try? DescriptorPassing.send(fd, UnsafeBufferPointer(start: vector, count: 1), descriptors: $0) }
            }
        }
        return sent == state.utf8.count
    }
}
