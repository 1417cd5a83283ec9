import Foundation
import Logging
import Synchronization
import Processes
import SystemPackage

#if canImport(Glibc)
import Glibc
import SystemCalls
#endif

// Helpers shared by the test targets.

/// Number of sockets and pipes open in this process: what the circuits layer or a test could
/// leak. Descriptors the Swift runtime opens lazily for itself (Dispatch's epoll, eventfd and
/// timerfd) are not counted, so a first use of a runtime feature is not mistaken for a leak.
public func openDescriptorCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var count = 0
    var target = [CChar](repeating: 0, count: 256)
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        let n = readlink("/proc/self/fd/" + name, &target, target.count - 1)
        guard n > 0 else { continue }
        let link = String(decoding: target[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if link.hasPrefix("socket:") || link.hasPrefix("pipe:") { count += 1 }
    }
    return count
}

/// Polls `condition` for up to `seconds` (for effects of other threads, not for timing).
public func eventually(_ seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = Double(DispatchTime.now().uptimeNanoseconds) / 1e9 + seconds
    while Double(DispatchTime.now().uptimeNanoseconds) / 1e9 < deadline {
        if condition() { return true }
        usleep(2000)
    }
    return condition()
}

/// Polls `make` for up to `seconds` until it gives a value (pausing 50 ms between tries).
public func eventuallyValue<T>(_ seconds: Double, _ make: () -> T?) -> T? {
    let deadline = Double(DispatchTime.now().uptimeNanoseconds) / 1e9 + seconds
    while Double(DispatchTime.now().uptimeNanoseconds) / 1e9 < deadline {
        if let value = make() { return value }
        usleep(50_000)
    }
    return make()
}

/// Runs `body`, failing instead of hanging when it takes longer than `seconds` (a lost
/// wakeup shows up as a failure, not as a stuck test run).
public func withDeadline<T: Sendable>(_ seconds: Double, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw DeadlineExceeded(seconds: seconds)
        }
        return value
    }
}

public struct DeadlineExceeded: Error { var seconds: Double }

public func makePipe() throws -> (read: FileDescriptor, write: FileDescriptor) {
    let p = try FileDescriptor.pipe()
    return (p.readEnd, p.writeEnd)
}

public func readAll(_ fd: FileDescriptor) throws -> [UInt8] { try fd.readToEnd() }

/// Runs `executable` to its end; how it ended and what it wrote (stdout and stderr together).
public func runCapturing(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> (ChildProcess.Termination, String) {
    let pipe = try makePipe()
    let child = try ChildProcess.spawn(executable, arguments: arguments, environment: environment, output: pipe.write)
    try pipe.write.close()
    let text = String(decoding: try readAll(pipe.read), as: UTF8.self)
    try pipe.read.close()
    return (try child.wait(), text)
}

/// Reads to end of file, failing after `seconds` instead of blocking: for pipes whose write
/// end a test expects closed, so that a write end left open fails the test, not the run.
public func readAll(_ fd: FileDescriptor, within seconds: Double) throws -> [UInt8] {
    let deadline = Double(DispatchTime.now().uptimeNanoseconds) / 1e9 + seconds
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let left = deadline - Double(DispatchTime.now().uptimeNanoseconds) / 1e9
        var p = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
        let ready = poll(&p, 1, CInt(max(0, left * 1000)))
        if ready == 0 { throw DeadlineExceeded(seconds: seconds) }
        if ready < 0 {
            if errno == EINTR { continue }
            throw Errno(rawValue: errno)
        }
        let n = try chunk.withUnsafeMutableBytes { try fd.read(into: $0) }
        if n == 0 { return bytes }
        bytes += chunk[..<n]
    }
}

/// The `cloister` executable the tests spawn: `CLOISTER_EXECUTABLE` when set (`make test` sets
/// the release build, the one `make install` installs), otherwise the one built next to the
/// test bundle.
public let cloisterExecutable: String = {
    if let path = ProcessInfo.processInfo.environment["CLOISTER_EXECUTABLE"], !path.isEmpty {
        precondition(path.hasPrefix("/") && FileManager.default.isExecutableFile(atPath: path),
                     "CLOISTER_EXECUTABLE=\(path) is not an absolute path to an executable")
        return path
    }
    var dir = ChildProcess.currentExecutable
    while !dir.isEmpty, !FileManager.default.isExecutableFile(atPath: dir + "/cloister") {
        dir = String(dir[..<(dir.lastIndex(of: "/") ?? dir.startIndex)])
    }
    return dir + "/cloister"
}()

/// The package's root folder (for the shipped `policies/`).
public let packageRoot: String = {
    var dir = #filePath
    for _ in 0..<3 { dir = String(dir[..<dir.lastIndex(of: "/")!]) }
    return dir
}()

/// xterm.js 5 as make fetched it (Debian 12), else the host's package (Debian 13): where
/// `cloister serve` finds it from a checkout's `web/`.
public let xtermDirectory: String = {
    let fetched = packageRoot + "/.build/xterm"
    return FileManager.default.fileExists(atPath: fetched + "/xterm.js") ? fetched : "/usr/share/javascript/xterm"
}()

/// The build id of `cloisterExecutable`, which differs from the test bundle's: what a test
/// must declare in a transport handshake with a `cloister` process.
public let cloisterBuildID: String = {
    let pipe = try! makePipe()
    let child = try! ChildProcess.spawn("/bin/sh", arguments: ["-c", "exec \"$0\" version --build-id >&3", cloisterExecutable],
                                        descriptors: [pipe.write])
    try! pipe.write.close()
    let text = String(decoding: try! readAll(pipe.read), as: UTF8.self)
    try! pipe.read.close()
    _ = try! child.wait()
    return text.trimmingCharacters(in: .whitespacesAndNewlines)
}()

/// A log handler that keeps what it is given, for checking log lines.
public final class CapturedLog: LogHandler, @unchecked Sendable {
    public struct Entry: Sendable {
        public var level: Logger.Level
        public var message: String
        public var metadata: Logger.Metadata
    }
    private let lock = Mutex<[Entry]>([])
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .trace
    public var entries: [Entry] { lock.withLock { $0 } }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let entry = Entry(level: event.level, message: event.message.description,
                          metadata: metadata.merging(event.metadata ?? [:]) { $1 })
        lock.withLock { $0.append(entry) }
    }

    public init() {}
}

/// A TCP socket listening on 127.0.0.1 at a port the kernel chose, and that port.
public func loopbackListener(backlog: Int32 = 16) -> (fd: Int32, port: UInt16) {
    let loopback = SocketAddress.inet(host: "127.0.0.1", port: 0)
    do {
        let fd = try loopback.socket(Int32(SOCK_STREAM.rawValue))
        try loopback.bind(fd)
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = try withUnsafeMutablePointer(to: &address) { (p) throws(SystemCallError) in
            try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (p) throws(SystemCallError) in
                try valueOrErrno("getsockname") { getsockname(fd, p, &length) }
            }
        }
        _ = try valueOrErrno("listen") { listen(fd, backlog) }
        return (fd, UInt16(bigEndian: address.sin_port))
    } catch {
        preconditionFailure("no loopback listener: \(error)")
    }
}

/// The datagram socket systemd reads a `Type=notify` service's `READY=1`/`STOPPING=1` from,
/// bound at `path` (give it to the service as NOTIFY_SOCKET).
public final class NotifySocket {
    public let path: String
    private let fd: Int32

    public init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw lastError("socket", detail: path) }
        do {
            try SocketAddress.unix(path: path).bind(fd)
        } catch {
            close(fd)
            throw error
        }
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    /// The next notification with the descriptors that came with it (as an fd store takes
    /// them), waiting up to 60 s.
    public func receive() -> (String, [FileDescriptor]) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let received = buffer.withUnsafeMutableBytes { bytes -> DescriptorPassing.Received? in
            var iov = iovec(iov_base: bytes.baseAddress, iov_len: bytes.count)
            return withUnsafeMutablePointer(to: &iov) { try? DescriptorPassing.receive(fd, UnsafeMutableBufferPointer(start: $0, count: 1), maxDescriptors: 8) }
        }
        guard let received, received.count > 0 else { return ("(nothing: errno \(errno))", []) }
        return (String(decoding: buffer[..<received.count], as: UTF8.self), received.descriptors.map { FileDescriptor(rawValue: $0) })
    }

    /// The next notification, waiting up to 60 s.
    public func next() -> String {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buffer, buffer.count, 0)
        return n > 0 ? String(decoding: buffer[..<n], as: UTF8.self) : "(nothing: errno \(errno))"
    }
}
