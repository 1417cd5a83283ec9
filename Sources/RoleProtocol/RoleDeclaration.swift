import FoundationEssentials

/// A sandboxed role, declared once: what the supervisor starts it with, what it seals itself
/// with, which profile confines it and what its settings are. Everything that lists roles
/// (spawning, `serve`'s profile checks, `cloister policy`, install and uninstall, the tests,
/// the documentation's tables) reads `RoleDeclaration.sandboxed`; a new role is one file with
/// its declaration and settings, and one entry there.
public struct RoleDeclaration: Sendable, Hashable, CustomStringConvertible {
    /// The process kind: its `cloister role NAME` command, its log label, its profile's name.
    public let role: Role
    /// What the role is for, in one line (`cloister policy roles`, the docs' table).
    public let purpose: String
    /// The supervisor's link to it (descriptor `Descriptors.transport`).
    public let link: Link
    /// Threads the role has when it seals itself, every one made before its filter:
    /// the main thread included, the reserve included.
    public let threads: Int
    /// Of those, kept for later `Threads.start` calls (no thread is made after the filter).
    public let reserve: Int
    /// What descriptor `Descriptors.sharedFile` holds, if the role gets one.
    public let sharedFile: String?
    /// What the server starts it only with (TLS, recording), or nil: always.
    public let onlyWith: Option?
    /// The settings message's type name (`RoleSettings`), for the docs' table.
    public let settings: String
    /// The profile's file name, in the profile directory and under `policies/base/`: the
    /// role's own, or (for the template) the one it compiles for what it forks.
    public let profile: String
    /// Whether the role itself loads the profile; the template does not: it forks workers,
    /// each of which loads it once its threads exist.
    public let sealed: Bool

    public init(role: Role, purpose: String, link: Link, threads: Int, reserve: Int, sharedFile: String? = nil,
                onlyWith: Option? = nil, profile: String? = nil, sealed: Bool = true, settings: String) {
        precondition(reserve < threads, "a role's reserve is part of its threads")
        (self.role, self.purpose, self.link, self.threads, self.reserve) = (role, purpose, link, threads, reserve)
        (self.sharedFile, self.onlyWith, self.settings) = (sharedFile, onlyWith, settings)
        self.profile = profile ?? "\(role.rawValue).json"
        self.sealed = sealed
    }

    public var description: String { role.rawValue }

    /// A server option some roles run only with.
    public enum Option: String, Sendable, Hashable {
        case tls = "TLS"
        case recording = "--record"
    }

    /// Whether a server with `options` runs this role.
    public func runs(with options: Set<Option>) -> Bool { onlyWith.map(options.contains) ?? true }

    /// Every sandboxed role, in the order the supervisor starts them.
    public static let sandboxed: [RoleDeclaration] = [.vault, .keyholder, .recorder, .worker, .template]

    /// Each profile file once, in the declarations' order (the template's is the worker's).
    public static func profiles(_ declarations: [RoleDeclaration] = sandboxed) -> [String] {
        var seen: Set<String> = []
        return declarations.map(\.profile).filter { seen.insert($0).inserted }
    }

    /// The declaration of `role`, if it is a sandboxed one.
    public static func of(_ role: Role, in declarations: [RoleDeclaration] = sandboxed) -> RoleDeclaration? {
        declarations.first { $0.role == role }
    }

    /// The rules every sandboxed role shares, under `policies/base/`; a role's own file there
    /// holds only what it adds.
    public static let commonProfile = "common.json"

    /// The descriptors every sandboxed role is started with, the same numbers for each.
    public enum Descriptors {
        /// Its transport to the supervisor (`link`).
        public static let transport: Int32 = 3
        /// A seqpacket socket over which it hands its seccomp listener to the supervisor.
        public static let listenerHandoff: Int32 = 4
        /// `sharedFile`, when the role has one.
        public static let sharedFile: Int32 = 5
    }
}

/// A sandboxed role's settings: one typed message the supervisor encodes as the role's one
/// `--settings` argument and the role decodes, so that no module formats another's flags.
public protocol RoleSettings: Codable, Sendable, Equatable {
    static var declaration: RoleDeclaration { get }
    /// Refuses settings the role could not run with, naming the field.
    func validate() throws(SettingsError)
}

extension RoleSettings {
    public func validate() throws(SettingsError) {}

    /// The `--settings` argument.
    public func encoded() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        // Encoding plain values cannot fail.
        return String(decoding: try! encoder.encode(self), as: UTF8.self)
    }

    /// The settings the supervisor gave, checked.
    public init(encoded text: String) throws(SettingsError) {
        do {
            self = try JSONDecoder().decode(Self.self, from: Data(text.utf8))
        } catch {
            throw SettingsError(role: Self.declaration.role, field: "--settings", problem: "cannot be read as \(Self.self): \(error)")
        }
        try validate()
    }
}

/// Settings a role cannot run with.
public struct SettingsError: Error, CustomStringConvertible, Equatable {
    public var role: Role
    public var field: String
    public var problem: String

    public init(role: Role, field: String, problem: String) {
        (self.role, self.field, self.problem) = (role, field, problem)
    }

    public var description: String { "\(role) settings: \(field): \(problem)" }
}

extension RoleDeclaration {
    /// One line a role, for people (`cloister policy roles`).
    public static func table(_ declarations: [RoleDeclaration] = sandboxed) -> String {
        func padded(_ s: String, _ width: Int) -> String { s + String(repeating: " ", count: max(1, width - s.count)) }
        return declarations.map { d in
            padded(d.role.rawValue, 11) + padded(d.profile, 16)
                + "threads \(d.threads) (reserve \(d.reserve))\(d.onlyWith.map { ", with \($0.rawValue) only" } ?? ""): \(d.purpose)\n"
        }.joined()
    }

    /// The roles' table as ARCHITECTURE.md shows it (a test checks the two agree).
    public static func markdownTable(_ declarations: [RoleDeclaration] = sandboxed) -> String {
        "| role | purpose | profile | threads (reserve) | descriptors | settings |\n|---|---|---|---|---|---|\n"
            + declarations.map { d in
                let handoff = d.sealed ? "its seccomp listener, handed over" : "none (where each process it forks hands its listener over)"
                let fds = ["\(Descriptors.transport): the supervisor link (`\(d.link.intent)`)", "\(Descriptors.listenerHandoff): \(handoff)"]
                    + (d.sharedFile.map { ["\(Descriptors.sharedFile): \($0)"] } ?? [])
                return "| \(d.role) | \(d.purpose)\(d.onlyWith.map { " (with \($0.rawValue) only)" } ?? "") | `policies/\(d.profile)` "
                    + "| \(d.threads) (\(d.reserve)) | \(fds.joined(separator: "; ")) | `\(d.settings)` |\n"
            }.joined()
    }
}
