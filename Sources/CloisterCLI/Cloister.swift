import ArgumentParser

@main
struct Cloister: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cloister",
        abstract: "A browser-terminal server whose parsers run in sandboxed, privilege-separated workers.",
        subcommands: [Version.self, Role.self])
}
