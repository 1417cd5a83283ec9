import ArgumentParser
import Circuits
import RoleProtocol
import SystemPackage
import Vault

/// The PTY vault, sandboxed under its own profile: it gets its configuration, the nursery
/// link and the worker links from the supervisor, and owns every terminal.
struct VaultRole: SandboxedRole {
    static let configuration = CommandConfiguration(commandName: "vault", shouldDisplay: false)

    @OptionGroup var sandbox: SandboxOptions
    @Option(help: "Window title sent to clients.") var title = "cloister"
    var steps: [String] = []

    enum CodingKeys: String, CodingKey { case sandbox, title }

    mutating func enterSandbox() throws {
        // Every session holds a PTY master and its duplicate, and every worker a link.
        steps = try sandbox.enter(role: "vault", openFileLimit: 4096)
    }

    func run() async throws {
        Log.bootstrap()
        let log = Log.logger(role: "vault")
        log.info("sandbox entered", metadata: ["steps": "\(steps.joined(separator: "; "))"])
        let vault = Vault(logger: log, title: title)
        let transport = try await Transport<UInt16>.start(
            socket: FileDescriptor(rawValue: 3), kind: .seqpacket,
            configuration: RoleLink.configuration(RoleIntent.supervisorVault, side: .acceptor))
        try await Heartbeats.answer(on: transport) { group in
            group.addTask { await vault.serve(supervisor: transport) }
            await group.next()
        }
    }
}
