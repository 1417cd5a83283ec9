import Foundation
import RoleProtocol
import Sandbox
import Supervisor
import TestSupport
import XCTest

/// Every list of roles derives from `RoleDeclaration.sandboxed`: a role declared once is
/// picked up by each of them, and the documents say what the declarations say.
final class RoleDeclarationTests: XCTestCase {
    /// A role that exists only here, declared as a real one would be.
    static let scribe = RoleDeclaration(
        role: Role(rawValue: "scribe"), purpose: "writes what it is told, into its directory", link: .supervisorVault,
        threads: 3, reserve: 1, settings: "ScribeSettings")

    struct ScribeSettings: RoleSettings {
        static var declaration: RoleDeclaration { RoleDeclarationTests.scribe }
        var directory = "/var/lib/cloister/scribe"
        var quota: UInt64 = 1 << 30

        func validate() throws(SettingsError) {
            guard directory.hasPrefix("/") else {
                throw SettingsError(role: Self.declaration.role, field: "directory", problem: "\"\(directory)\" is not an absolute path")
            }
        }
    }

    private func scratch() throws -> String {
        let directory = NSTemporaryDirectory() + "cloister-roles-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory + "/base", withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: directory) }
        return directory
    }

    func testAThrowawayRoleIsPickedUpByEveryDerivedList() throws {
        let all = RoleDeclaration.sandboxed + [Self.scribe]
        let directory = try scratch()
        for profile in RoleDeclaration.profiles() {
            try FileManager.default.copyItem(atPath: policiesDirectory + "/" + profile, toPath: directory + "/" + profile)
        }
        // Serve's profile check: the new role's profile is required, and named when missing.
        XCTAssertNoThrow(try RoleProfiles(directory: directory, declarations: RoleDeclaration.sandboxed))
        XCTAssertThrowsError(try RoleProfiles(directory: directory, declarations: all)) {
            XCTAssertEqual("\($0)", "\(directory)/scribe.json: cannot read: open: No such file or directory (errno 2)")
        }
        XCTAssertNil(RoleProfiles.find(in: [directory], for: all))

        // Its profile: the common base and its own rules, composed as the shipped ones are.
        try FileManager.default.copyItem(atPath: policiesDirectory + "/base/" + RoleDeclaration.commonProfile,
                                         toPath: directory + "/base/" + RoleDeclaration.commonProfile)
        try #"""
        {"defaultAction": "SCMP_ACT_KILL_PROCESS", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [
          {"names": ["fsync"], "action": "SCMP_ACT_ALLOW", "comment": "the scribe's own: what it wrote is on disk before it says so"}]}
        """#.write(toFile: directory + "/base/scribe.json", atomically: true, encoding: .utf8)
        let composed = try Policy.composed(directory: directory + "/base", common: RoleDeclaration.commonProfile, file: Self.scribe.profile)
        XCTAssertEqual(composed.explain("fsync", args: []).action, .allow)
        XCTAssertEqual(composed.explain("execve", args: []).action, .killProcess, "the common base's rules are in it")
        try composed.json().write(toFile: directory + "/scribe.json", atomically: true, encoding: .utf8)
        let profiles = try RoleProfiles(directory: directory, declarations: all)
        XCTAssertEqual(profiles.path(Self.scribe.role), directory + "/scribe.json")
        XCTAssertEqual(profiles.path(.worker), directory + "/worker.json")
        XCTAssertEqual(RoleProfiles.find(in: ["/nonexistent", directory], for: all), directory)

        // What install installs (`policy roles --format files`), the people's and the docs' tables.
        XCTAssertEqual(all.map(\.profile).last, "scribe.json")
        XCTAssertTrue(RoleDeclaration.table(all).contains("scribe     scribe.json     threads 3 (reserve 1): writes what it is told"),
                      RoleDeclaration.table(all))
        XCTAssertTrue(RoleDeclaration.markdownTable(all).contains(
            "| scribe | writes what it is told, into its directory | `policies/scribe.json` | 3 (1) | 3: the supervisor link (`cloister.supervisor-vault/1`); 4: its seccomp listener, handed over | `ScribeSettings` |"),
            RoleDeclaration.markdownTable(all))
        XCTAssertEqual(RoleDeclaration.of(Self.scribe.role, in: all), Self.scribe)
        XCTAssertNil(RoleDeclaration.of(Self.scribe.role), "not among the product's roles")

        // Its settings travel as one argument and are checked where they arrive.
        var settings = ScribeSettings()
        settings.quota = 42
        XCTAssertEqual(try ScribeSettings(encoded: settings.encoded()), settings)
        settings.directory = "relative"
        XCTAssertThrowsError(try ScribeSettings(encoded: settings.encoded())) {
            XCTAssertEqual("\($0)", "scribe settings: directory: \"relative\" is not an absolute path")
        }
        XCTAssertThrowsError(try ScribeSettings(encoded: "{\"directory\": 5}")) {
            XCTAssertTrue("\($0)".hasPrefix("scribe settings: --settings: cannot be read as ScribeSettings"), "\($0)")
        }
    }

    /// The role table in ARCHITECTURE.md is the declarations' (`cloister policy roles --format markdown`).
    func testArchitectureShowsTheDeclaredRoles() throws {
        let text = try String(contentsOfFile: packageRoot + "/ARCHITECTURE.md", encoding: .utf8)
        guard let start = text.range(of: "<!-- roles -->\n"), let end = text.range(of: "<!-- /roles -->") else {
            return XCTFail("ARCHITECTURE.md has no <!-- roles --> table")
        }
        XCTAssertEqual(String(text[start.upperBound..<end.lowerBound]), RoleDeclaration.markdownTable(),
                       "ARCHITECTURE.md's role table: paste `cloister policy roles --format markdown`")
    }

    /// Each role's settings survive the trip as the supervisor sends them.
    func testEveryRolesSettingsRoundTrip() throws {
        var worker = WorkerSettings()
        worker.authHeader = "X-User"
        worker.preferences = #"{"fontSize":18}"#
        XCTAssertEqual(try WorkerSettings(encoded: worker.encoded()), worker)
        var vault = VaultSettings()
        vault.sessions.linger = .milliseconds(1500)
        vault.sessions.slowConsumer = .disconnect
        XCTAssertEqual(try VaultSettings(encoded: vault.encoded()), vault)
        vault.sessions.ringBytes = 10
        XCTAssertThrowsError(try VaultSettings(encoded: vault.encoded())) {
            XCTAssertEqual("\($0)", "vault settings: --session-ring: 10 is not between 4096 and 1073741824 bytes")
        }
        let keyholder = KeyholderSettings(keyFile: "/etc/k.pem", certificateFile: "/etc/c.pem", signaturesPerSecond: 7)
        XCTAssertEqual(try KeyholderSettings(encoded: keyholder.encoded()), keyholder)
        XCTAssertEqual(keyholder.signatureBurst, 14)
        XCTAssertThrowsError(try KeyholderSettings(encoded: KeyholderSettings(keyFile: "k.pem", certificateFile: "/c").encoded()))
    }
}

private let policiesDirectory = packageRoot + "/policies"
