import ArgumentParser
import Circuits
import Logging
import RoleProtocol
import SystemPackage
import Worker

/// The sandboxed worker: enters its sandbox first, then serves the client sockets the
/// supervisor hands over (HTTP, WebSocket, ttyd's protocol) and reaches terminals through the
/// vault link the supervisor gives it. Each client's conversation ends when the client has
/// gone, which is how the supervisor counts connections.
struct WorkerRole: SandboxedRole {
    static let configuration = CommandConfiguration(commandName: "worker", shouldDisplay: false)

    @OptionGroup var sandbox: SandboxOptions
    @Flag(inversion: .prefixedNo, help: "Refuse WebSocket handshakes whose Origin differs from Host.")
    var checkOrigin = true
    var steps: [String] = []

    enum CodingKeys: String, CodingKey { case sandbox, checkOrigin }

    mutating func enterSandbox() throws {
        steps = try sandbox.enter(role: "worker")
    }

    func run() async throws {
        Log.bootstrap()
        let log = Log.logger(role: "worker")
        log.info("sandbox entered", metadata: ["steps": "\(steps.joined(separator: "; "))"])
        var settings = WebWorker.Settings()
        settings.checkOrigin = checkOrigin
        let worker = WebWorker(settings: settings, logger: log)
        let transport = try await Transport<UInt16>.start(
            socket: FileDescriptor(rawValue: 3), kind: .seqpacket,
            configuration: RoleLink.configuration(RoleIntent.supervisorWorker, side: .acceptor))
        try await Heartbeats.answer(on: transport) { group in
            while let circuit = try? await transport.accept() {
                group.addTask { await Self.conversation(circuit, worker: worker, log: log) }
            }
        }
    }

    static func conversation(_ circuit: Circuit<UInt16>, worker: WebWorker, log: Logger) async {
        guard let first = try? await circuit.receive() else { return }
        defer { first.descriptors?.close() }
        switch RoleMessage(decoding: first.payload) {
        case .client:
            guard let client = first.descriptors?.take(0) else { break }
            await worker.serve(client: client)
        case .vaultLink:
            guard let socket = first.descriptors?.take(0) else { break }
            do {
                let link = try await Transport<UInt16>.start(
                    socket: socket, kind: .seqpacket,
                    configuration: RoleLink.configuration(RoleIntent.workerVault, side: .opener))
                worker.link(vault: link)
                log.info("vault linked")
            } catch {
                log.error("vault link failed", metadata: ["error": "\(error)"])
            }
        default:
            log.error("unexpected message from the supervisor", metadata: ["bytes": "\(first.payload.prefix(8))"])
        }
        try? await circuit.send([], end: true)
    }
}

/// What every supervised role does on its transport's control circuit: say ready, then send
/// back every heartbeat. A role that stops answering is killed and replaced.
enum Heartbeats {
    static func answer(on transport: Transport<UInt16>,
                       serving body: @Sendable (inout TaskGroup<Void>) async -> Void) async throws {
        let control = try transport.reserved(RoleLink.control)
        try await control.send(Array("ready".utf8))
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while let ping = try? await control.receive() {
                    guard (try? await control.send(ping.payload)) != nil else { return }
                }
            }
            await body(&group)
            group.cancelAll()
        }
    }
}
