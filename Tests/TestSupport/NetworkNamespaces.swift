import Foundation
import Processes
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Machines on one machine: a network namespace per name, each joined by a veth pair to a
/// bridge in this namespace, on a /24 of its own (`10.231.N.0`, N from this process's id), so
/// that the test reaches each at its own address as it would a host. Root only. Removed, with
/// every process left in them, when released.
public final class NetworkNamespaces {
    public let names: [String]
    private let tag: String
    private let subnet: String
    private var made: [String] = []
    private var bridgeMade = false

    public static var available: Bool { getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/ip") }

    /// Instances made by this process so far: each gets names and a subnet of its own, as
    /// the kernel may still be removing the last one's links when the next is made.
    private static let made = Mutex(0)

    public init(_ names: [String]) throws {
        self.names = names
        let serial = Self.made.withLock { n in
            n += 1
            return n
        }
        tag = "clf\(getpid() % 10_000)x\(serial % 100)"
        subnet = "10.231.\((Int(getpid()) + serial) % 250)"
        do {
            try ip(["link", "add", "name", tag, "type", "bridge"])
            bridgeMade = true
            try ip(["addr", "add", "\(subnet).254/24", "dev", tag])
            try ip(["link", "set", tag, "up"])
            for (i, name) in names.enumerated() {
                let namespace = self.namespace(name)
                try ip(["netns", "add", namespace])
                made.append(namespace)
                let outside = "\(tag)v\(i)", inside = "\(tag)i\(i)"
                try ip(["link", "add", outside, "type", "veth", "peer", "name", inside])
                try ip(["link", "set", inside, "netns", namespace])
                try ip(["link", "set", outside, "master", tag, "up"])
                try ip(["-n", namespace, "addr", "add", "\(address(name))/24", "dev", inside])
                try ip(["-n", namespace, "link", "set", inside, "up"])
                try ip(["-n", namespace, "link", "set", "lo", "up"])
            }
        } catch {
            tearDown()
            throw error
        }
    }

    deinit { tearDown() }

    /// The namespace `name` runs in, for `ip netns exec`.
    public func namespace(_ name: String) -> String { "\(tag)-\(name)" }

    /// Its address (numbered in the order given, from 1).
    public func address(_ name: String) -> String {
        "\(subnet).\((names.firstIndex(of: name) ?? 0) + 1)"
    }

    /// SIGKILL to every process in `name`'s namespace: the machine is switched off.
    public func killEverything(in name: String) { killEverything(inNamespace: namespace(name)) }

    private func killEverything(inNamespace namespace: String) {
        for _ in 0..<20 {
            let pids = ((try? output(["netns", "pids", namespace])) ?? "").split(separator: "\n").compactMap { pid_t($0) }
            if pids.isEmpty { return }
            for pid in pids { kill(pid, SIGKILL) }
            usleep(100_000)
        }
    }

    private func tearDown() {
        for namespace in made {
            killEverything(inNamespace: namespace)
            try? ip(["netns", "delete", namespace])
        }
        made = []
        if bridgeMade { try? ip(["link", "delete", tag]) }
        bridgeMade = false
    }

    private func ip(_ arguments: [String]) throws { _ = try output(arguments) }

    @discardableResult
    private func output(_ arguments: [String]) throws -> String {
        let file = NSTemporaryDirectory() + "cloister-ip-\(getpid())-\(UUID().uuidString.prefix(8))"
        let fd = try FileDescriptor.open(file, .writeOnly, options: [.create, .truncate], permissions: .ownerReadWrite)
        defer { unlink(file) }
        let child: ChildProcess
        do {
            defer { try? fd.close() }
            child = try ChildProcess.spawn("/usr/bin/ip", arguments: arguments, output: fd)
        }
        let ended = try child.wait()
        let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
        guard ended == .exited(0) else {
            throw ServedCloister.Failure(description: "ip \(arguments.joined(separator: " ")): \(ended): \(text)")
        }
        return text
    }
}
