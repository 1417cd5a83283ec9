#if canImport(Glibc)
import Glibc
#endif

/// A socket address built from what an operator or a test names: a unix socket path (or an
/// abstract name, written with a leading "@"), or a numeric IPv4 or IPv6 host and a port.
/// Never resolved through DNS.
public enum SocketAddress: Sendable, Equatable, CustomStringConvertible {
    case unix(path: String)
    case inet(host: String, port: UInt16)

    public var family: CInt {
        switch self {
        case .unix: return AF_UNIX
        case .inet(let host, _): return host.contains(":") ? AF_INET6 : AF_INET
        }
    }

    public var description: String {
        switch self {
        case .unix(let path): return path
        case let .inet(host, port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }
    }

    /// Calls `body` with the address as the kernel takes it; fails (EINVAL, or ENAMETOOLONG
    /// for a path) when it cannot be one.
    public func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws(SystemCallError) -> R) throws(SystemCallError) -> R {
        switch self {
        case .unix(let path):
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            var bytes = Array(path.utf8)
            let abstract = bytes.first == UInt8(ascii: "@")
            if abstract { bytes[0] = 0 }
            let capacity = MemoryLayout.size(ofValue: address.sun_path)
            guard !bytes.isEmpty, bytes.count < capacity, abstract || !bytes.contains(0) else {
                throw SystemCallError(call: "sockaddr_un", errno: .fileNameTooLong, detail: "\(path): a path of 1 to \(capacity - 1) bytes")
            }
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
            // An abstract name is exactly as long as it is; a path is NUL-terminated.
            let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
            return try withUnsafePointer(to: &address) { (p) throws(SystemCallError) -> R in
                try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (p) throws(SystemCallError) -> R in try body(p, length) }
            }
        case let .inet(host, port):
            if family == AF_INET6 {
                var address = sockaddr_in6()
                address.sin6_family = sa_family_t(AF_INET6)
                address.sin6_port = port.bigEndian
                guard inet_pton(AF_INET6, host, &address.sin6_addr) == 1 else {
                    throw SystemCallError(call: "inet_pton", errno: .invalidArgument, detail: "\"\(host)\" is not a numeric IPv6 address")
                }
                return try Self.pass(&address, body)
            }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
                throw SystemCallError(call: "inet_pton", errno: .invalidArgument, detail: "\"\(host)\" is not a numeric IPv4 or IPv6 address")
            }
            return try Self.pass(&address, body)
        }
    }

    /// `address` as the generic `sockaddr` the calls take, with its size.
    private static func pass<Address, R>(_ address: inout Address,
                                         _ body: (UnsafePointer<sockaddr>, socklen_t) throws(SystemCallError) -> R) throws(SystemCallError) -> R {
        try withUnsafePointer(to: &address) { (p) throws(SystemCallError) -> R in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (p) throws(SystemCallError) -> R in
                try body(p, socklen_t(MemoryLayout<Address>.size))
            }
        }
    }

    /// A new socket (close-on-exec) of `type` for this address's family.
    public func socket(_ type: CInt) throws(SystemCallError) -> CInt {
        try valueOrErrno("socket", detail: description) { Glibc.socket(family, type | CInt(SOCK_CLOEXEC.rawValue), 0) }
    }

    /// connect(2), retrying on EINTR.
    public func connect(_ fd: CInt) throws(SystemCallError) {
        _ = try withSockaddr { (p, length) throws(SystemCallError) in
            try valueOrErrno("connect", detail: description) { Glibc.connect(fd, p, length) }
        }
    }

    /// bind(2).
    public func bind(_ fd: CInt) throws(SystemCallError) {
        _ = try withSockaddr { (p, length) throws(SystemCallError) in
            try valueOrErrno("bind", detail: description) { Glibc.bind(fd, p, length) }
        }
    }
}
