import ArgumentParser
import Circuits
import FoundationEssentials
import Keyholder
import Nursery
import Recorder
import RoleProtocol
import Sandbox
import Supervisor
import SystemCalls
import SystemPackage
import Template
import Vault
import WebAssets
import Worker

#if canImport(Glibc)
import Glibc
#endif

/// `cloister role …`: the processes Cloister starts of itself. Each command parses its
/// options and hands over to the role's own module.
struct RoleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "role",
        abstract: "Run an internal role (started by cloister itself).",
        shouldDisplay: false,
        subcommands: [WorkerCommand.self, VaultCommand.self, NurseryCommand.self, LoginCommand.self, SandboxProbeCommand.self,
                      CircuitsPeerCommand.self, UpgradeCheckCommand.self, KeyholderCommand.self, KeyholderCheckCommand.self,
                      TemplateCommand.self, RecorderCommand.self])
}

/// What a running server asks a binary before it upgrades to it: the state formats it adopts.
struct UpgradeCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upgrade-check", abstract: "Print the state formats this binary adopts, as JSON (cloister ctl upgrade asks).")

    func run() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        print(String(decoding: try encoder.encode(Server.UpgradeCheck(build: Version.description)), as: UTF8.self))
    }
}

extension EnforcementMode: ExpressibleByArgument {}

/// The keyholder: reads the TLS key (before its sandbox, as the key file's owner) and signs
/// for the workers (`KeyholderRole`).
struct KeyholderCommand: SandboxedCommand {
    static let configuration = CommandConfiguration(commandName: RoleDeclaration.keyholder.role.rawValue, shouldDisplay: false)

    @OptionGroup var sandbox: SandboxOptions
    @Option(help: "KeyholderSettings, as the supervisor encodes them.") var settings: String
    var confined: ConfinedRole?
    var signingKey: SigningKey?
    var decoded: KeyholderSettings?

    enum CodingKeys: String, CodingKey { case sandbox, settings }

    mutating func confine() throws {
        let settings = try KeyholderSettings(encoded: settings)
        decoded = settings
        (confined, signingKey) = try KeyholderRole.confine(sandbox.sandbox(.keyholder), keyFile: settings.keyFile,
                                                           certificateFile: settings.certificateFile)
    }

    func run() async throws {
        let settings = decoded!
        try await KeyholderRole.run(key: signingKey!, budget: .init(perSecond: settings.signaturesPerSecond, burst: settings.signatureBurst),
                                    confined: confined!)
    }
}

/// What `cloister serve` runs before it starts a keyholder, and on SIGHUP: reads the pair as
/// the keyholder would, prints the key's type, and exits; the key never enters the server.
struct KeyholderCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keyholder-check", abstract: "Check a TLS certificate and key as the keyholder reads them; print the key's type.")

    @Option(help: "The private key, PEM.") var key: String
    @Option(help: "The certificate chain, PEM.") var cert: String

    func run() throws {
        do {
            print(try SigningKey(keyFile: key, certificateFile: cert).kind.name)
        } catch {
            printToStandardError("\(error)\n")
            throw ExitCode(2)
        }
    }
}

/// How a role process is confined; given by whoever spawns the role.
struct SandboxOptions: ParsableArguments {
    @Option(help: "The role's seccomp profile (OCI JSON).") var policy: String
    @Option(help: "enforce, report (kills reported by the parent) or learn.") var mode: EnforcementMode = .enforce
    @Option(help: "User to switch to when started as root.") var user: String = "nobody"
    @Option(help: "Group to switch to when started as root.") var group: String = "nogroup"
    @Option(help: "Descriptor over which to hand the seccomp listener to the parent (report and learn); a declared role's is its layout's.")
    var listenerFD: Int32?

    var sandbox: RoleSandbox {
        RoleSandbox(policy: policy, mode: mode, user: user, group: group, listenerFD: listenerFD)
    }

    /// A declared role hands its listener over at the descriptor its declaration lays out.
    func sandbox(_ declaration: RoleDeclaration) -> RoleSandbox {
        var sandbox = self.sandbox
        if mode != .enforce && listenerFD == nil { sandbox.listenerFD = RoleDeclaration.Descriptors.listenerHandoff }
        return sandbox
    }
}

extension SessionSettings.SlowConsumer: ExpressibleByArgument {}

/// How the vault keeps sessions: given to `cloister serve`, checked by `SessionSettings`.
struct SessionOptions: ParsableArguments {
    @Option(help: "Output kept per session for clients that resume or fall behind, in bytes (4096 to 1073741824).")
    var sessionRing: Int = SessionSettings().ringBytes
    @Option(help: "Seconds a session with no client attached stays before it is hung up (0 to 604800).")
    var sessionLinger: Double = 300
    @Option(help: "A client that falls behind the ring: resync (told how much it missed) or disconnect.")
    var slowConsumer: SessionSettings.SlowConsumer = .resync
    @Option(help: "This host's name in a fleet (1 to 16 lower-case letters, digits and dashes): every session id begins with it and a dot, for a load balancer to route resumes and shared links on (deploy/haproxy-fleet.cfg).")
    var hostID: String?

    /// Checked, naming the option when something is wrong.
    func settings() throws(SettingsError) -> SessionSettings {
        var s = SessionSettings()
        s.ringBytes = sessionRing
        guard sessionLinger.isFinite, sessionLinger >= 0, sessionLinger <= 604_800 else {
            throw SettingsError(role: .vault, field: "--session-linger", problem: "\(sessionLinger) is not between 0 and 604800 seconds")
        }
        s.linger = .milliseconds(Int64(sessionLinger * 1000))
        s.slowConsumer = slowConsumer
        s.hostID = hostID ?? ""
        if hostID == "" { throw SettingsError(role: .vault, field: "--host-id", problem: "is empty") }
        try s.validate()
        return s
    }
}

struct WorkerCommand: SandboxedCommand {
    static let configuration = CommandConfiguration(commandName: RoleDeclaration.worker.role.rawValue, shouldDisplay: false)

    @OptionGroup var sandbox: SandboxOptions
    @Option(help: "WorkerSettings, as the supervisor encodes them.") var settings: String
    var confined: ConfinedRole?
    var decoded: WorkerSettings?
    var assets = AssetBundle()

    enum CodingKeys: String, CodingKey { case sandbox, settings }

    mutating func confine() throws {
        let settings = try WorkerSettings(encoded: settings)
        decoded = settings
        (assets, confined) = try Self.confine(settings, sandbox)
    }

    /// The page's assets, read while the process is still single-threaded and unconfined
    /// (the sandbox opens nothing; a server without a page, in some tests, gives none), then
    /// the worker's confinement.
    /// `beforeConfinement` runs with the assets, still single-threaded: the confinement
    /// refuses a process that has more than one thread by then.
    static func confine(_ settings: WorkerSettings, _ sandbox: SandboxOptions,
                        beforeConfinement: (AssetBundle) throws -> Void = { _ in }) throws -> (AssetBundle, ConfinedRole) {
        let shared = RoleDeclaration.Descriptors.sharedFile
        let assets = fcntl(shared, F_GETFD) != -1 ? try AssetLoader.receive(FileDescriptor(rawValue: shared)) : AssetBundle()
        try beforeConfinement(assets)
        return (assets, try WorkerRole.confine(sandbox.sandbox(.worker), openFiles: settings.openFiles))
    }

    func run() async throws { try await Self.run(decoded!, assets, confined!) }

    static func run(_ settings: WorkerSettings, _ assets: AssetBundle, _ confined: ConfinedRole) async throws {
        try await WorkerRole.run(settings: try WebWorker.Settings(settings), assets: assets, confined: confined)
    }
}

/// The template: confined as a worker is, single-threaded, forking a worker per request of
/// the supervisor (`WorkerTemplate`). Its `confine` returns only in a forked child, which then
/// runs as the worker it is.
struct TemplateCommand: SandboxedCommand {
    static let configuration = CommandConfiguration(commandName: RoleDeclaration.template.role.rawValue, shouldDisplay: false)

    @OptionGroup var sandbox: SandboxOptions
    @Option(help: "TemplateSettings, as the supervisor encodes them.") var settings: String
    /// What the forked worker goes on with.
    var worker: (WorkerSettings, AssetBundle, ConfinedRole)?

    enum CodingKeys: String, CodingKey { case sandbox, settings }

    mutating func confine() throws {
        let settings = try TemplateSettings(encoded: settings).worker
        // The assets, the runtime's lookups for the worker's pipeline (`WorkerWarmUp`, on
        // fixed bytes, single-threaded: the confinement then checks that it still is), the
        // worker's confinement and its compiled profile, made once: every worker forked
        // shares their pages.
        let (assets, confined) = try WorkerCommand.confine(settings, sandbox) { assets in
            WorkerWarmUp.run(settings: try WebWorker.Settings(settings), assets: assets)
        }
        try WorkerTemplate.serve(requests: RoleDeclaration.Descriptors.transport, build: BuildID.current)
        worker = (settings, assets, confined)
    }

    func run() async throws { try await WorkerCommand.run(worker!.0, worker!.1, worker!.2) }
}

struct VaultCommand: SandboxedCommand {
    static let configuration = CommandConfiguration(commandName: RoleDeclaration.vault.role.rawValue, shouldDisplay: false)

    @OptionGroup var sandbox: SandboxOptions
    @Option(help: "VaultSettings, as the supervisor encodes them.") var settings: String
    var confined: ConfinedRole?
    var decoded: VaultSettings?

    enum CodingKeys: String, CodingKey { case sandbox, settings }

    mutating func confine() throws {
        let settings = try VaultSettings(encoded: settings)
        decoded = settings
        confined = try VaultRole.confine(sandbox.sandbox(.vault), openFiles: settings.openFiles)
    }

    func run() async throws {
        try await VaultRole.run(settings: decoded!, confined: confined!)
    }
}

/// The recorder: writes each session's recording from the vault's feed (`RecorderRole`).
struct RecorderCommand: SandboxedCommand {
    static let configuration = CommandConfiguration(commandName: RoleDeclaration.recorder.role.rawValue, shouldDisplay: false)

    @OptionGroup var sandbox: SandboxOptions
    @Option(help: "RecorderSettings, as the supervisor encodes them.") var settings: String
    var confined: ConfinedRole?
    var decoded: RecorderSettings?
    var batch: SystemCallError?

    enum CodingKeys: String, CodingKey { case sandbox, settings }

    mutating func confine() throws {
        let settings = try RecorderSettings(encoded: settings)
        decoded = settings
        (confined, batch) = try RecorderRole.confine(sandbox.sandbox(.recorder), settings: settings)
    }

    func run() async throws {
        try await RecorderRole.run(settings: decoded!, confined: confined!, batch: batch)
    }
}

struct NurseryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: Role.nursery.rawValue, shouldDisplay: false)

    @Option(help: "User the shells run as, when started as root.") var user: String?
    @Option(help: "Group the shells run as, when started as root.") var group: String?
    @Flag(help: "Start the command as a login shell (argv[0] \"-name\").") var login = false
    @Option(help: "TERM for the shells.") var terminalType = "xterm-256color"
    @Option(help: "Directory the shells start in (default: the user's home).") var cwd: String?
    @Flag(help: "Each shell as the account of its web user.") var accountPerUser = false
    @Option(help: "The group those accounts must be in.") var accountGroup: String?
    @Argument(parsing: .postTerminator, help: "The command, an absolute path first.") var command: [String]

    func validate() throws {
        guard let executable = command.first, executable.hasPrefix("/") else {
            throw ValidationError("the command must start with an absolute path")
        }
    }

    func run() async throws {
        var shells = NurseryShells(user: user, group: group, login: login, terminalType: terminalType,
                                   workingDirectory: cwd, command: command)
        shells.accountPerUser = accountPerUser
        shells.accountGroup = accountGroup
        try await NurseryRole.run(shells)
    }
}

/// `cloister role login`: what the nursery spawns, on a session's terminal, when each web user
/// has an account (`--account-per-user`): takes the account (its groups, then its group, then
/// its user) and execs the shell, which keeps the terminal. The nursery has already checked
/// the account; this refuses root once more, since a mistake here would be a root shell.
struct LoginCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "login", shouldDisplay: false)

    @Option(help: "The account.") var user: String
    @Option(help: "Directory the shell starts in (default: the account's home).") var cwd: String?
    @Flag(help: "Start the command as a login shell (argv[0] \"-name\").") var login = false
    @Argument(parsing: .postTerminator, help: "The command, an absolute path first.") var command: [String]

    func validate() throws {
        guard let executable = command.first, executable.hasPrefix("/") else {
            throw ValidationError("the command must start with an absolute path")
        }
    }

    func run() throws {
        let account = try Identity.account(user: user)
        guard account.uid != 0 else { throw ValidationError("\(user) is root: no shell as root for a web user") }
        try Identity.become(account, groups: .ofUser)
        if chdir(cwd ?? account.home) != 0 {
            // A missing home is no reason to refuse a shell; a missing --cwd is.
            if let cwd { throw SandboxError(step: "login", lastError("chdir(\(cwd)) as \(user)")) }
            _ = chdir("/")
        }
        let name = command[0].split(separator: "/").last.map(String.init) ?? command[0]
        let argv = [login ? "-\(name)" : name] + command.dropFirst()
        let pointers = argv.map { strdup($0) } + [nil]
        execv(command[0], pointers)
        throw SandboxError(step: "login", lastError("execv(\(command[0]))"))
    }
}
