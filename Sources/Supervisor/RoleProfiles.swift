import RoleProtocol
import Sandbox

/// Where each declared role's seccomp profile is: one directory, one `RoleDeclaration.profile`
/// file per role. Every profile the server may start a role under is loaded and compiled
/// before anything starts, so a missing or broken one is a start-up error naming the file.
public struct RoleProfiles: Sendable, Equatable {
    public let directory: String
    /// Each role's file, for the roles these profiles were checked for.
    public let files: [Role: String]

    /// The directories `serve` looks in when none is given, in order.
    public static let defaultDirectories = ["policies", "/usr/share/cloister/policies"]

    /// The profiles of `declarations` in `directory`, each loaded and compiled.
    public init(directory: String, declarations: [RoleDeclaration]) throws(PolicyError) {
        for declaration in declarations {
            let file = Self.path(directory, declaration)
            let policy = try Policy.load(file: file)
            do {
                _ = try SeccompProgram(policy)
            } catch {
                throw PolicyError(file: file, path: nil, message: "does not compile: \(error)")
            }
        }
        self.directory = directory
        files = Dictionary(uniqueKeysWithValues: declarations.map { ($0.role, Self.path(directory, $0)) })
    }

    /// Files given one by one (`policy learn` with one --base).
    public init(files: [Role: String]) {
        directory = ""
        self.files = files
    }

    /// The first of `directories` that holds a profile for each of `declarations`.
    public static func find(in directories: [String] = defaultDirectories, for declarations: [RoleDeclaration]) -> String? {
        directories.first { directory in
            declarations.allSatisfy { access(path(directory, $0), R_OK) == 0 }
        }
    }

    /// The file `role` runs under.
    public func path(_ role: Role) -> String {
        guard let file = files[role] else { preconditionFailure("no profile was checked for the \(role)") }
        return file
    }

    static func path(_ directory: String, _ declaration: RoleDeclaration) -> String { "\(directory)/\(declaration.profile)" }
}

#if canImport(Glibc)
import Glibc
#endif
