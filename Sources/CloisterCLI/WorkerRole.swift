import ArgumentParser
import Circuits
import Processes
import Supervisor
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The sandboxed worker: enters its sandbox first, then serves client connections handed to it
/// over circuits. Each conversation's first message carries one client socket; the worker
/// answers on it and reports the bytes it handled when the client goes away.
///
/// The HTTP/WebSocket parser replaces the echo loop when the server lands; the sandbox
/// entry, the transport and the descriptor hand-over are the real ones.
struct WorkerRole: SandboxedRole {
    static let configuration = CommandConfiguration(commandName: "worker", shouldDisplay: false)

    @OptionGroup var sandbox: SandboxOptions
    var steps: [String] = []

    enum CodingKeys: String, CodingKey { case sandbox }

    mutating func enterSandbox() throws {
        steps = try sandbox.enter(role: "worker")
    }

    func run() async throws {
        Log.bootstrap()
        let log = Log.logger(role: "worker")
        log.info("sandbox entered", metadata: ["steps": "\(steps.joined(separator: "; "))"])
        let transport = try await Transport<UInt16>.start(
            socket: FileDescriptor(rawValue: 3), kind: .seqpacket,
            configuration: .init(intent: RoleLauncher.workerIntent, side: .acceptor, reservedBand: 2, reserved: [0: "control"]))
        let control = try transport.reserved(0)
        try await control.send(Array("ready".utf8))
        await withTaskGroup(of: Void.self) { group in
            // Health: every heartbeat the supervisor sends comes straight back. A worker
            // that stops answering is killed and replaced by the supervisor.
            group.addTask {
                while let ping = try? await control.receive() {
                    guard (try? await control.send(ping.payload)) != nil else { return }
                }
            }
            while let circuit = try? await transport.accept() {
                group.addTask { await Self.serve(circuit) }
            }
            group.cancelAll()
        }
    }

    static func serve(_ circuit: Circuit<UInt16>) async {
        guard let first = try? await circuit.receive(), let client = first.descriptors?.take(0) else {
            try? await circuit.send(Array("no client".utf8), end: true)
            return
        }
        let handled = (try? await onOwnThread {
            defer { try? client.close() }
            var handled = 0
            var buffer = [UInt8](repeating: 0, count: 16 * 1024)
            while true {
                guard let n = try? buffer.withUnsafeMutableBytes({ try client.read(into: $0) }), n > 0 else { break }
                guard (try? buffer[..<n].withUnsafeBytes({ try client.writeAll($0) })) != nil else { break }
                handled += n
            }
            return handled
        }) ?? 0
        try? await circuit.send(Array("\(handled)".utf8), end: true)
        // Drain to the opener's end so the circuit goes idle.
        while let m = try? await circuit.receive(), !m.isEnd {}
    }
}
