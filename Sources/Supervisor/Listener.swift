import CShim
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A listening socket the supervisor owns: TCP, or a unix socket for a reverse proxy on the
/// same machine. Client bytes are never read here: accepted sockets go straight to a worker.
public final class Listener: Sendable {
    public let descriptor: FileDescriptor
    /// "host:port" as bound (the port resolved when 0 was asked for), or "unix:PATH".
    public let address: String
    /// The socket file of a unix listener, removed when it is closed.
    public let path: String?
    /// Written to by `stop` to wake `accept`: shutting the socket down instead would end its
    /// listening for good, and a socket systemd owns (or an upgrade hands on) must outlive
    /// this process's use of it.
    private let stopped = Atomic<Bool>(false)
    private let wakeup: (read: Int32, write: Int32) = {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { return (-1, -1) }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        return (ends[0], ends[1])
    }()

    public static let unixPrefix = "unix:"

    /// Whether a `--listen` address names the address a listener was bound as (a port of 0
    /// names every port).
    static func sameAddress(_ given: String, _ bound: String) -> Bool {
        if given == bound { return true }
        guard given.hasSuffix(":0"), let colon = bound.lastIndex(of: ":") else { return false }
        return String(given.dropLast(2)) == String(bound[..<colon])
    }

    /// Who may connect to a unix listener: its file's owner, group and mode.
    public struct SocketAccess: Sendable {
        public var owner: uid_t?
        public var group: gid_t?
        public var mode: mode_t

        public init(owner: uid_t? = nil, group: gid_t? = nil, mode: mode_t = 0o660) {
            (self.owner, self.group, self.mode) = (owner, group, mode)
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

    public init(_ text: String, access: SocketAccess = .init(), backlog: Int32 = 511) throws(SystemCallError) {
        if text.hasPrefix(Self.unixPrefix) {
            let path = String(text.dropFirst(Self.unixPrefix.count))
            descriptor = try Self.bindUnix(path, access: access, backlog: backlog)
            address = text
            self.path = path
            return
        }
        path = nil
        guard let (host, port) = Self.parse(text) else {
            throw SystemCallError(call: "parse", errno: .invalidArgument,
                                  detail: "\(text): expected HOST:PORT, [IPV6]:PORT or :PORT with a numeric host")
        }
        let requested = SocketAddress.inet(host: host, port: port)
        let fd = try requested.socket(CInt(SOCK_STREAM.rawValue))
        do {
            var one: Int32 = 1
            _ = try valueOrErrno("setsockopt(SO_REUSEADDR)", detail: text) {
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            }
            if requested.family == AF_INET6 {
                // "[::]:PORT" means IPv6 only; IPv4 is its own --listen.
                _ = try valueOrErrno("setsockopt(IPV6_V6ONLY)", detail: text) {
                    setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
                }
            }
            try requested.bind(fd)
            _ = try valueOrErrno("listen", detail: text) { listen(fd, backlog) }
        } catch {
            close(fd)
            throw error
        }
        // Non-blocking: a connection reset between poll and accept must not block the loop.
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        descriptor = FileDescriptor(rawValue: fd)
        address = Self.boundAddress(fd) ?? text
    }

    /// A connection that has sent nothing is not acceptable for up to `seconds`
    /// (TCP_DEFER_ACCEPT): a silent connection costs no accept, and no worker, until its
    /// first byte. After that the kernel hands it over anyway, and admission's deadline
    /// applies. Systemd's `DeferAcceptSec=` sets the same on a socket it passes.
    public func deferAccept(seconds: Int) throws(SystemCallError) {
        var domain: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = try valueOrErrno("getsockopt(SO_DOMAIN)", detail: address) { getsockopt(descriptor.rawValue, SOL_SOCKET, SO_DOMAIN, &domain, &length) }
        // A unix listener (a proxy on this host) has no such option.
        guard domain == AF_INET || domain == AF_INET6 else { return }
        var value = Int32(clamping: seconds)
        _ = try valueOrErrno("setsockopt(TCP_DEFER_ACCEPT)", detail: address) {
            setsockopt(descriptor.rawValue, Int32(IPPROTO_TCP), TCP_DEFER_ACCEPT, &value, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    /// Takes over a listening TCP socket this process inherited (systemd socket activation),
    /// after checking that it is one, and makes it close-on-exec so no role inherits it.
    public init(adopting fd: Int32) throws(SystemCallError) {
        let name = "inherited descriptor \(fd)"
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = try valueOrErrno("getsockopt(SO_ACCEPTCONN)", detail: name) { getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &value, &length) }
        guard value == 1 else {
            throw SystemCallError(call: "getsockopt(SO_ACCEPTCONN)", errno: .invalidArgument, detail: "\(name) is not a listening socket")
        }
        _ = try valueOrErrno("getsockopt(SO_TYPE)", detail: name) { getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &length) }
        guard value == Int32(SOCK_STREAM.rawValue) else {
            throw SystemCallError(call: "getsockopt(SO_TYPE)", errno: .invalidArgument, detail: "\(name) is not a stream socket")
        }
        _ = try valueOrErrno("fcntl(F_SETFD)", detail: name) { fcntl(fd, F_SETFD, FD_CLOEXEC) }
        // Non-blocking: a connection reset between poll and accept must not block the loop.
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        descriptor = FileDescriptor(rawValue: fd)
        address = Self.boundAddress(fd) ?? name
        path = nil
    }

    /// A unix stream socket at `path` (absolute): a socket file left by a process that died is
    /// replaced, anything else there is refused. Owner, group and mode are set between bind
    /// and listen, so no connection is taken before they hold.
    static func bindUnix(_ path: String, access: SocketAccess, backlog: Int32) throws(SystemCallError) -> FileDescriptor {
        guard path.hasPrefix("/"), path.utf8.count < 108 else {
            throw SystemCallError(call: "bind", errno: .invalidArgument, detail: "\(path): an absolute path of at most 107 bytes is needed")
        }
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFSOCK else {
                throw SystemCallError(call: "bind", errno: .fileExists, detail: "\(path) exists and is not a socket")
            }
            let probe = SocketAddress.unix(path: path)
            if let fd = try? probe.socket(CInt(SOCK_STREAM.rawValue)) {
                defer { close(fd) }
                if (try? probe.connect(fd)) != nil {
                    throw SystemCallError(call: "bind", errno: .addressInUse, detail: "\(path): a server is listening there")
                }
            }
            _ = try valueOrErrno("unlink", detail: "stale socket \(path)") { unlink(path) }
        }
        let address = SocketAddress.unix(path: path)
        let fd = try address.socket(CInt(SOCK_STREAM.rawValue))
        do throws(SystemCallError) {
            try address.bind(fd)
            do throws(SystemCallError) {
                if access.owner != nil || access.group != nil {
                    _ = try valueOrErrno("chown", detail: path) { chown(path, access.owner ?? uid_t.max, access.group ?? gid_t.max) }
                }
                _ = try valueOrErrno("chmod", detail: path) { chmod(path, access.mode) }
                _ = try valueOrErrno("listen", detail: path) { listen(fd, backlog) }
            } catch {
                unlink(path)
                throw error
            }
        } catch {
            close(fd)
            throw error
        }
        return FileDescriptor(rawValue: fd)
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

    deinit {
        close(wakeup.read)
        close(wakeup.write)
    }

    /// Blocks until a client arrives. The socket is close-on-exec. After `stop`, fails with
    /// EINVAL, as accept(2) on a socket that does not listen. A client that waits is taken
    /// at once; poll(2) is called only when none does.
    public func accept() throws(SystemCallError) -> FileDescriptor {
        while true {
            guard !stopped.load(ordering: .acquiring) else {
                throw SystemCallError(call: "accept4", errno: .invalidArgument, detail: "\(address): stopped")
            }
            do {
                return FileDescriptor(rawValue: try valueOrErrno("accept4", detail: address) { cloister_accept_cloexec(descriptor.rawValue) })
            } catch where error.errno == .connectionAbort {
                continue  // reset before it was accepted: the client's business
            } catch where error.errno == .wouldBlock {
                var ready = [pollfd(fd: descriptor.rawValue, events: Int16(POLLIN), revents: 0),
                             pollfd(fd: wakeup.read, events: Int16(POLLIN), revents: 0)]
                _ = try valueOrErrno("poll", detail: address) { poll(&ready, nfds_t(wakeup.read >= 0 ? 2 : 1), -1) }
            }
        }
    }

    /// Wakes a blocked `accept` (which then fails with EINVAL) and closes nothing; the socket
    /// itself is left as it is (what connects meanwhile waits in its backlog for whoever
    /// listens next). A unix listener's socket file is removed, so no client finds a server
    /// that has gone.
    public func stop() {
        stopped.store(true, ordering: .releasing)
        var byte: UInt8 = 1
        _ = write(wakeup.write, &byte, 1)
        if let path { unlink(path) }
    }
}
