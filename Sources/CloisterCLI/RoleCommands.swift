import ArgumentParser
import Nursery
import RoleProtocol
import Sandbox
import Vault
import Worker

/// `cloister role …`: the processes Cloister starts of itself. Each command parses its
/// options and hands over to the role's own module.
struct RoleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "role",
        abstract: "Run an internal role (started by cloister itself).",
        shouldDisplay: false,
        subcommands: [WorkerCommand.self, VaultCommand.self, NurseryCommand.self, SandboxProbeCommand.self,
                      CircuitsPeerCommand.self])
}

extension EnforcementMode: ExpressibleByArgument {}

/// How a role process is confined; given by whoever spawns the role.
struct SandboxOptions: ParsableArguments {
    @Option(help: "The role's seccomp profile (OCI JSON).") var policy: String
    @Option(help: "enforce, report (kills reported by the parent) or learn.") var mode: EnforcementMode = .enforce
    @Option(help: "User to switch to when started as root.") var user: String = "nobody"
    @Option(help: "Group to switch to when started as root.") var group: String = "nogroup"
    @Option(help: "Descriptor over which to hand the seccomp listener to the parent (report and learn).")
    var listenerFD: Int32?

    var sandbox: RoleSandbox {
        RoleSandbox(policy: policy, mode: mode, user: user, group: group, listenerFD: listenerFD)
    }
}

struct WorkerCommand: SandboxedCommand {
    static let configuration = CommandConfiguration(commandName: Role.worker.rawValue, shouldDisplay: false)

    @OptionGroup var sandbox: SandboxOptions
    @Flag(inversion: .prefixedNo, help: "Refuse WebSocket handshakes whose Origin differs from Host.")
    var checkOrigin = true
    var steps: [String] = []

    enum CodingKeys: String, CodingKey { case sandbox, checkOrigin }

    mutating func enterSandbox() throws { steps = try WorkerRole.enterSandbox(sandbox.sandbox) }

    func run() async throws {
        var settings = WebWorker.Settings()
        settings.checkOrigin = checkOrigin
        try await WorkerRole.run(settings: settings, sandboxSteps: steps)
    }
}

struct VaultCommand: SandboxedCommand {
    static let configuration = CommandConfiguration(commandName: Role.vault.rawValue, shouldDisplay: false)

    @OptionGroup var sandbox: SandboxOptions
    @Option(help: "Window title sent to clients.") var title = "cloister"
    var steps: [String] = []

    enum CodingKeys: String, CodingKey { case sandbox, title }

    mutating func enterSandbox() throws { steps = try VaultRole.enterSandbox(sandbox.sandbox) }

    func run() async throws { try await VaultRole.run(title: title, sandboxSteps: steps) }
}

struct NurseryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: Role.nursery.rawValue, shouldDisplay: false)

    @Option(help: "User the shells run as, when started as root.") var user: String?
    @Option(help: "Group the shells run as, when started as root.") var group: String?
    @Flag(help: "Start the command as a login shell (argv[0] \"-name\").") var login = false
    @Argument(parsing: .postTerminator, help: "The command, an absolute path first.") var command: [String]

    func validate() throws {
        guard let executable = command.first, executable.hasPrefix("/") else {
            throw ValidationError("the command must start with an absolute path")
        }
    }

    func run() async throws { try await NurseryRole.run(user: user, group: group, login: login, command: command) }
}
