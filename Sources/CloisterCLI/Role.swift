import ArgumentParser

/// Internal roles: how the supervisor (and the tests) start a process of this same binary in
/// another role. Not for operators; hidden from help.
struct Role: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "role",
        abstract: "Run an internal role (started by cloister itself).",
        shouldDisplay: false,
        subcommands: [WorkerRole.self, VaultRole.self, NurseryRole.self, SandboxProbeRole.self, CircuitsPeerRole.self])
}
