import CShim
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A listening TCP socket the supervisor owns. Client bytes are never read here: accepted
/// sockets go straight to a worker.
public final class Listener: Sendable {
    public let descriptor: FileDescriptor
    /// "host:port" as bound (the port resolved when 0 was asked for).
    public let address: String

    public struct Failure: Error, CustomStringConvertible {
        public var address: String
        public var call: String
        public var errno: Errno?
        public var detail = ""
        public var description: String {
            "\(address): \(call) failed: \(errno.map { "\($0) (errno \($0.rawValue))" } ?? detail)"
        }
    }

    /// Parses "HOST:PORT", "[V6]:PORT" or ":PORT" (all IPv4 addresses). Numeric hosts only,
    /// so what is bound never depends on name resolution.
    public static func parse(_ text: String) -> (host: String, port: UInt16)? {
        var host: Substring, port: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            port = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            port = text[text.index(after: colon)...]
            if host.contains(":") { return nil }
            if host.isEmpty { host = "0.0.0.0" }
        }
        guard let number = UInt16(port) else { return nil }
        return (String(host), number)
    }

    public init(_ text: String, backlog: Int32 = 511) throws(Failure) {
        guard let (host, port) = Self.parse(text) else {
            throw Failure(address: text, call: "parse", detail: "expected HOST:PORT, [IPV6]:PORT or :PORT with a numeric host")
        }
        var v4 = sockaddr_in(), v6 = sockaddr_in6()
        let family: Int32
        if inet_pton(AF_INET, host, &v4.sin_addr) == 1 {
            family = AF_INET
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = port.bigEndian
        } else if inet_pton(AF_INET6, host, &v6.sin6_addr) == 1 {
            family = AF_INET6
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = port.bigEndian
        } else {
            throw Failure(address: text, call: "inet_pton", detail: "\"\(host)\" is not a numeric IPv4 or IPv6 address")
        }
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(address: text, call: "socket", errno: Errno(rawValue: errno)) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if family == AF_INET6 {
            // "[::]:PORT" means IPv6 only; IPv4 is its own --listen.
            setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        let bound = family == AF_INET
            ? withUnsafePointer(to: &v4) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            : withUnsafePointer(to: &v6) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        guard bound == 0 else {
            let failure = Failure(address: text, call: "bind", errno: Errno(rawValue: errno))
            close(fd)
            throw failure
        }
        guard listen(fd, backlog) == 0 else {
            let failure = Failure(address: text, call: "listen", errno: Errno(rawValue: errno))
            close(fd)
            throw failure
        }
        descriptor = FileDescriptor(rawValue: fd)
        address = Self.boundAddress(fd) ?? text
    }

    /// Takes over a listening TCP socket this process inherited (systemd socket activation),
    /// after checking that it is one, and makes it close-on-exec so no role inherits it.
    public init(adopting fd: Int32) throws(Failure) {
        let name = "inherited descriptor \(fd)"
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &value, &length) == 0 else {
            throw Failure(address: name, call: "getsockopt(SO_ACCEPTCONN)", errno: Errno(rawValue: errno))
        }
        guard value == 1 else { throw Failure(address: name, call: "getsockopt(SO_ACCEPTCONN)", detail: "not a listening socket") }
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &length) == 0, value == Int32(SOCK_STREAM.rawValue) else {
            throw Failure(address: name, call: "getsockopt(SO_TYPE)", detail: "not a stream socket")
        }
        guard fcntl(fd, F_SETFD, FD_CLOEXEC) == 0 else {
            throw Failure(address: name, call: "fcntl(F_SETFD)", errno: Errno(rawValue: errno))
        }
        descriptor = FileDescriptor(rawValue: fd)
        address = Self.boundAddress(fd) ?? name
    }

    /// "host:port" ("[host]:port" for IPv6) of the address a socket is bound to, as the
    /// kernel reports it (so port 0 shows the port chosen).
    static func boundAddress(_ fd: Int32) -> String? {
        var storage = sockaddr_storage()
        var size = socklen_t(MemoryLayout<sockaddr_storage>.size)
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST)), port = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { address -> Int32 in
                guard getsockname(fd, address, &size) == 0 else { return -1 }
                return getnameinfo(address, size, &host, socklen_t(host.count), &port, socklen_t(port.count),
                                   NI_NUMERICHOST | NI_NUMERICSERV)
            }
        }
        guard rc == 0 else { return nil }
        func text(_ bytes: [CChar]) -> String {
            String(decoding: bytes.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        let name = text(host), service = text(port)
        return Int32(storage.ss_family) == AF_INET6 ? "[\(name)]:\(service)" : "\(name):\(service)"
    }

    /// The listening sockets systemd passed (LISTEN_PID is this process, LISTEN_FDS of them
    /// from descriptor 3), or none. The variables are removed so nothing started later
    /// mistakes them for its own.
    public static func inherited() throws(Failure) -> [Listener] {
        defer {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        guard let pid = getenv("LISTEN_PID").flatMap({ pid_t(String(cString: $0)) }), pid == getpid(),
              let count = getenv("LISTEN_FDS").flatMap({ Int32(String(cString: $0)) }), count > 0 else { return [] }
        var adopted: [Listener] = []
        do {
            for fd in 3..<(3 + count) { adopted.append(try Listener(adopting: fd)) }
        } catch {
            for listener in adopted { try? listener.descriptor.close() }
            throw error
        }
        return adopted
    }

    /// Blocks until a client arrives. The socket is close-on-exec.
    public func accept() throws(Failure) -> FileDescriptor {
        while true {
            let fd = cloister_accept_cloexec(descriptor.rawValue)
            if fd >= 0 { return FileDescriptor(rawValue: fd) }
            // A connection reset before it was accepted is the client's business.
            if errno == EINTR || errno == ECONNABORTED { continue }
            throw Failure(address: address, call: "accept4", errno: Errno(rawValue: errno))
        }
    }

    /// Wakes a blocked `accept` (which then fails with EINVAL) and closes nothing yet.
    public func stop() {
        shutdown(descriptor.rawValue, Int32(SHUT_RDWR))
    }
}
