import Circuits
import Logging
import NIOPosix
import RoleProtocol
import Sandbox
import SystemPackage
import WebAssets

/// The worker process: confined first, sealed once its threads exist, then serves the client sockets the
/// supervisor hands over (HTTP, WebSocket, ttyd's protocol) and reaches terminals through the
/// vault link the supervisor gives it.
public enum WorkerRole {
    /// Before the first `await`, while the process is single-threaded.
    /// `openFiles`: the descriptor limit, which the supervisor derives from --max-clients
    /// (one socket per client, and room for the rest).
    public static func confine(_ sandbox: RoleSandbox, openFiles: UInt64) throws -> ConfinedRole {
        try sandbox.confine(role: RoleDeclaration.worker.role.rawValue, openFileLimit: openFiles)
    }

    /// Every thread the worker has exists before its filter is loaded: the event loop (which
    /// also runs Swift concurrency, `Main`) and the supervisor link's reader and writer. It
    /// keeps no reserve: nothing it does later needs a thread.
    public static func run(settings: WebWorker.Settings, assets: AssetBundle, confined: ConfinedRole) async throws {
        RoleLog.bootstrap()
        let log = RoleLog.logger(.worker)
        // One event loop serves every client and the vault link (`Main` makes it the only one).
        let vault = VaultLink(loop: MultiThreadedEventLoopGroup.singleton.next())
        let supervisor = try await Link.supervisorWorker.start(socket: Link.inheritedTransport, side: .acceptor)
        let steps = try confined.seal(threads: RoleDeclaration.worker.threads, reserve: RoleDeclaration.worker.reserve)
        log.info("sandbox entered", metadata: ["steps": "\(steps.joined(separator: "; "))", "assets": "\(assets.assets.count)"])
        let tls = WorkerTLS(loop: vault.loop)
        let worker = WebWorker(settings: settings, service: vault, assets: assets, logger: log, tls: tls)
        try await ControlCircuit.serve(supervisor, counters: worker.counters) { group in
            while let circuit = try? await supervisor.accept() {
                group.addTask { await fromSupervisor(circuit, worker: worker, vault: vault, tls: tls, log: log) }
            }
        }
    }

    /// One supervisor conversation. Ended when done with: for a client, once the client has
    /// gone, which is how the supervisor counts connections.
    static func fromSupervisor(_ circuit: RoleCircuit, worker: WebWorker, vault: VaultLink, tls: WorkerTLS, log: Logger) async {
        guard let received = await circuit.firstMessage(SupervisorToWorker.self, logger: log) else { return }
        // The decoder checked that each kind came with its one descriptor.
        guard let socket = received.descriptors?.take(0) else { return }
        switch received.message {
        case .client(let tls, let newSessions, let trustedProxy):
            // No task waits for the connection: its close ends the conversation.
            await worker.serve(client: socket, on: vault.loop, tls: tls,
                               terms: .init(newSessions: newSessions, fromTrustedProxy: trustedProxy), authenticated: {
                Task { try? await circuit.send(WorkerToSupervisor.authenticated.encoded) }
            }) { circuit.abandon() }
        case .keyholderLink(_, let keyKind):
            do {
                guard let kind = TLSKeyKind(rawValue: keyKind) else {
                    throw TLSSetupError(description: "key type \(keyKind) is not one Cloister knows")
                }
                try await tls.replace(link: socket, chain: received.descriptors!.take(1)!, kind: kind)
                log.info("keyholder linked", metadata: ["key": "\(kind)"])
            } catch {
                log.error("keyholder link failed", metadata: ["error": "\(error)"])
            }
            try? await circuit.send([], end: true)
        case .vaultLink:
            do {
                try await vault.replace(with: socket)
                log.info("vault linked")
            } catch {
                log.error("vault link failed", metadata: ["error": "\(error)"])
            }
            try? await circuit.send([], end: true)
        }
    }
}
