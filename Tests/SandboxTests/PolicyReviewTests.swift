import Foundation
import RoleProtocol
import SystemPackage
import XCTest
@testable import Sandbox

/// `check` and `explain` on the shipped profiles, and the warnings on dangerous ones.
final class PolicyReviewTests: XCTestCase {
    private var worker: Policy { get throws { try Policy.load(file: packageRootPolicies + "/worker.json") } }

    func testShippedProfilesCompileWithoutWarnings() throws {
        for file in (RoleDeclaration.profiles() + ["base/" + RoleDeclaration.commonProfile])
            .map({ packageRootPolicies + "/" + $0 }) {
            let policy = try Policy.load(file: file)
            XCTAssertNoThrow(try SeccompProgram(policy), file)
            XCTAssertEqual(policy.warnings, [], file)
            XCTAssertEqual(policy.conflicts, [], file)
            XCTAssertEqual(policy.defaultAction, .killProcess, file)
        }
    }

    /// No role may be allowed any syscall of the forbidden list, under any condition.
    func testRolesAllowNothingForbidden() throws {
        for profile in RoleDeclaration.profiles() {
            let role = String(profile.dropLast(".json".count))
            let policy = try Policy.load(file: packageRootPolicies + "/" + profile)
            let allowed = policy.allowedSyscalls
            XCTAssertEqual(allowed.intersection(Policy.forbidden.keys), [])
            // Every thread exists before the filter: any clone is killed, whatever its flags.
            for flags: UInt64 in [0x3d0f00, UInt64(SIGCHLD), 0] {
                XCTAssertEqual(policy.explain("clone", args: [flags]).action, .killProcess, "\(role): clone \(flags)")
            }
            XCTAssertEqual(policy.explain("clone3", args: []).action, .killProcess, role)
            for rule in policy.rules where rule.names.contains("ioctl") && rule.action == .allow {
                XCTAssertFalse(rule.conditions.isEmpty, "\(role): ioctl allowed without a request list")
            }
            XCTAssertEqual(policy.explain("ioctl", args: [0, 0x5412]).action, .killProcess, "\(role): TIOCSTI")
        }
    }

    /// The vault may resize a terminal (TIOCSWINSZ) and ask how much it has waiting (TIOCINQ),
    /// and nothing else by ioctl.
    func testVaultIoctls() throws {
        let vault = try Policy.load(file: packageRootPolicies + "/vault.json")
        XCTAssertEqual(vault.explain("ioctl", args: [5, 0x5414]).action, .allow)
        XCTAssertEqual(vault.explain("ioctl", args: [5, 0x541b]).action, .allow, "TIOCINQ")
        XCTAssertEqual(vault.explain("ioctl", args: [5, 0x5401]).action, .allow, "TCGETS: whether a terminal echoes (--record-input)")
        XCTAssertEqual(vault.explain("ioctl", args: [5, 0x5402]).action, .killProcess, "TCSETS")
        XCTAssertEqual(vault.explain("ioctl", args: [5, 0x5421]).action, .killProcess, "FIONBIO")
        XCTAssertEqual(vault.explain("ioctl", args: [5, 0x540e]).action, .killProcess, "TIOCSCTTY")
        XCTAssertEqual(vault.explain("ioctl", args: [5, 0x5412]).action, .killProcess, "TIOCSTI")
        XCTAssertEqual(vault.explain("execve", args: []).action, .killProcess)
        XCTAssertEqual(try worker.explain("ioctl", args: [5, 0x5414]).action, .killProcess, "the worker has no terminal")
    }

    /// The recorder writes only what it is handed: it opens, makes and names nothing, and
    /// reaches no one (no socket, no connect), so a recorder taken over by what a session
    /// printed can write into the recordings it holds and nowhere else.
    func testTheRecorderOpensNothing() throws {
        let recorder = try Policy.load(file: packageRootPolicies + "/recorder.json")
        for call in ["open", "openat", "openat2", "creat", "mkdir", "mkdirat", "unlink", "unlinkat", "rename", "renameat2", "linkat",
                     "symlinkat", "memfd_create", "ioctl", "recvmsg"] {
            XCTAssertNotEqual(recorder.explain(call, args: []).action, .allow, call)
        }
        for call in ["socket", "connect", "execve", "ptrace"] {
            XCTAssertEqual(recorder.explain(call, args: []).action, .killProcess, call)
        }
        XCTAssertEqual(recorder.explain("ftruncate", args: []).action, .allow, "going on with an unfinished recording")
    }

    /// The vault keeps sessions that outlive it without making a file: the nursery makes each
    /// ring file, the poller's epoll instance exists before the sandbox.
    func testTheVaultMakesNoFile() throws {
        let vault = try Policy.load(file: packageRootPolicies + "/vault.json")
        for call in ["memfd_create", "ftruncate", "epoll_create1", "open", "openat"] {
            XCTAssertNotEqual(vault.explain(call, args: []).action, .allow, call)
        }
    }

    /// With every thread and event loop made before the filter, what only a new thread or a
    /// new loop calls is not allowed (thread start: rseq, set_robust_list, the thread's name;
    /// a loop's epoll, eventfd and timerfd; the CPU count NIO sizes a group by), and the
    /// allow-lists stay at what they are: the worker's at most 40 (OpenSSH's pre-auth child
    /// has about 30), the vault's a little more for its terminals.
    func testAllowListsHoldOnlyWhatASealedRoleCalls() throws {
        for (role, limit) in [("worker", 33), ("vault", 36), ("keyholder", 34), ("recorder", 36)] {
            let policy = try Policy.load(file: packageRootPolicies + "/\(role).json")
            for call in ["rseq", "set_robust_list", "epoll_create", "epoll_create1", "eventfd2", "timerfd_create", "sched_getaffinity",
                         "setpriority"] + (role == "keyholder" ? [] : ["getpid"]) {
                XCTAssertNotEqual(policy.explain(call, args: []).action, .allow, "\(role): \(call)")
            }
            XCTAssertNotEqual(policy.explain("prctl", args: [15]).action, .allow, "\(role): PR_SET_NAME")
            XCTAssertNotEqual(policy.explain("mprotect", args: [0, 0, 3]).action, .allow, "\(role): mprotect")
            XCTAssertNotEqual(policy.explain("mmap", args: [0, 0, 0]).action, .allow, "\(role): mmap PROT_NONE")
            // Every allowed call says why.
            for rule in policy.rules where rule.action == .allow {
                XCTAssertFalse((rule.comment ?? "").isEmpty, "\(role): \(rule.path) has no reason")
                XCTAssertFalse((rule.comment ?? "").hasPrefix("learned from role"), "\(role): \(rule.path) is learned, not reviewed")
            }
            XCTAssertLessThanOrEqual(policy.allowedSyscalls.count, limit, role)
        }
    }

    /// Each shipped profile is exactly what its bases compose (`cloister policy compose`):
    /// the rules every role shares, once, then the role's own. A rule edited in a shipped
    /// file alone, or learned and not reviewed into a base, fails here naming the file.
    func testEachShippedProfileIsItsBasesComposed() throws {
        for profile in RoleDeclaration.profiles() {
            let composed = try Policy.composed(directory: packageRootPolicies + "/base", common: RoleDeclaration.commonProfile,
                                               file: profile)
            let shipped = try String(contentsOfFile: packageRootPolicies + "/" + profile, encoding: .utf8)
            XCTAssertEqual(shipped, composed.json(), "\(profile) differs from policies/base: run cloister policy compose")
        }
        // A role's own file holds only what it adds: no rule of the common base again.
        let common = try Policy.load(file: packageRootPolicies + "/base/" + RoleDeclaration.commonProfile)
        for profile in RoleDeclaration.profiles() {
            let own = try Policy.load(file: packageRootPolicies + "/base/" + profile)
            for rule in own.rules {
                XCTAssertFalse(common.rules.contains { $0.names == rule.names && $0.action == rule.action && $0.conditions == rule.conditions },
                               "base/\(profile): \(rule.path) repeats a common rule")
            }
        }
    }

    /// Composition refuses a role file that would change what every role shares.
    func testARoleCannotLoosenTheDefaultAction() throws {
        let common = try Policy.load(file: packageRootPolicies + "/base/" + RoleDeclaration.commonProfile)
        let loose = try Policy.parse(Data(#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}"#.utf8), source: "loose.json")
        XCTAssertThrowsError(try Policy.composed(common: common, own: loose, source: "x.json")) {
            XCTAssertEqual(($0 as? PolicyError)?.path, "$.defaultAction", "\($0)")
        }
    }

    /// The reviewed bases say what sets the roles apart, so that a reviewer of `base/` sees
    /// it and learning starts from it: the vault's terminal work (a resize, how much a terminal
    /// has waiting, fstat of a descriptor) is in the vault's own rules and nowhere in the worker's.
    func testBasesHoldEachRolesOwnNeeds() throws {
        let base = packageRootPolicies + "/base"
        let workerBase = try Policy.composed(directory: base, common: RoleDeclaration.commonProfile, file: "worker.json")
        let vaultBase = try Policy.composed(directory: base, common: RoleDeclaration.commonProfile, file: "vault.json")
        let terminalWork: [(String, [UInt64])] = [("ioctl", [5, 0x5414]), ("ioctl", [5, 0x541b]), ("newfstatat", [5, 0, 0, 0x1000])]
        for (call, args) in terminalWork {
            XCTAssertEqual(vaultBase.explain(call, args: args).action, .allow, "vault base: \(call)")
            XCTAssertNotEqual(workerBase.explain(call, args: args).action, .allow, "worker base: \(call)")
        }
        XCTAssertEqual(vaultBase.explain("newfstatat", args: [5, 0, 0, 0]).action, .errno(13), "stat by path stays refused")
    }

    func testExplain() throws {
        let policy = try worker
        XCTAssertEqual(policy.explain("execve", args: []).action, .killProcess)
        XCTAssertEqual(policy.explain("openat", args: []).action, .errno(13))
        XCTAssertEqual(policy.explain("clone3", args: []).action, .killProcess)
        let thread = policy.explain("clone", args: [0x3d0f00])
        XCTAssertEqual(thread.action, .killProcess)
        XCTAssertTrue(thread.reason.contains("decides clone unconditionally"), thread.reason)
        let executable = policy.explain("mmap", args: [0, 0, 7])
        XCTAssertEqual(executable.action, .killProcess)
        XCTAssertTrue(executable.reason.hasPrefix("no rule for mmap matches these arguments"), executable.reason)
        XCTAssertEqual(policy.explain("ioctl", args: [0, 0x5412]).action, .killProcess)
        XCTAssertEqual(policy.explain("read", args: []).action, .allow)
        XCTAssertTrue(policy.explain("reboot", args: []).reason.hasPrefix("no rule names reboot"))
    }

    func testWarningsOnDangerousProfile() throws {
        let json = #"""
        {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
          {"names": ["execve", "clone", "clone3", "ioctl"], "action": "SCMP_ACT_ALLOW"},
          {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
          {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 3, "op": "SCMP_CMP_EQ"}]}
        ]}
        """#
        let policy = try Policy.parse(Data(json.utf8), source: "bad.json")
        let messages = policy.warnings.map(\.description)
        XCTAssertTrue(messages.contains("$.defaultAction: SCMP_ACT_ALLOW lets every unlisted syscall through"), "\(messages)")
        XCTAssertTrue(messages.contains("$.syscalls[0]: allows execve, which runs a new program"), "\(messages)")
        XCTAssertTrue(messages.contains("$.syscalls[0]: allows clone, which creates a thread or a process (a sandboxed role makes every thread before its filter)"), "\(messages)")
        XCTAssertTrue(messages.contains { $0.contains("allows clone3") })
        XCTAssertTrue(messages.contains { $0.contains("ioctl without restricting the request") })
        XCTAssertEqual(policy.conflicts.map(\.path), ["$.syscalls[2]"])
    }

    func testExportProducesFilterCode() throws {
        let program = try SeccompProgram(try worker)
        let pipe = try FileDescriptor.pipe()
        try program.exportPFC(to: pipe.writeEnd)
        try pipe.writeEnd.close()
        var text = ""
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try buffer.withUnsafeMutableBytes { try pipe.readEnd.read(into: $0) }
            if n == 0 { break }
            text += String(decoding: buffer[..<n], as: UTF8.self)
        }
        try pipe.readEnd.close()
        XCTAssertTrue(text.contains("# filter for arch x86_64"), text)
        XCTAssertTrue(text.contains("action KILL_PROCESS"), text)
        XCTAssertTrue(text.contains("if ($syscall == 0)\n    action ALLOW;"), "read (0) is allowed")
        XCTAssertTrue(text.contains("# invalid architecture action\naction KILL_PROCESS;"), "foreign architectures are killed")
    }
}
