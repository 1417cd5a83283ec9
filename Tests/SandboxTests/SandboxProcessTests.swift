import CShim
import Foundation
import Logging
import Processes
import Sandbox
import SystemPackage
import TestSupport
import Synchronization
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Real processes: a child enters the sandbox exactly as the worker does (same code, same
/// profile) and attempts forbidden actions; the parent observes the kill or the errno.
final class SandboxProcessTests: XCTestCase {
    static let workerPolicy = packageRootPolicies + "/worker.json"
    static let vaultPolicy = packageRootPolicies + "/vault.json"
    static let keyholderPolicy = packageRootPolicies + "/keyholder.json"
    static let recorderPolicy = packageRootPolicies + "/recorder.json"
    /// Every sandboxed role's shipped profile.
    static let rolePolicies = [workerPolicy, vaultPolicy, keyholderPolicy, recorderPolicy]

    struct Outcome {
        var termination: ChildProcess.Termination
        var output: String
    }

    /// Runs the probe with `extra` descriptors (starting at 3) and returns how it ended.
    func probe(_ attempt: String, mode: String = "enforce", policy: String = workerPolicy, descriptors: [FileDescriptor] = [],
               extraArguments: [String] = [], monitor: ((FileDescriptor) throws -> Void)? = nil) throws -> Outcome {
        let out = try makePipe()
        var fds = descriptors
        var handoff: (FileDescriptor, FileDescriptor)?
        if monitor != nil {
            let pair = try FileDescriptor.socketPairForHandoff()
            handoff = pair
            while fds.count < 1 { fds.append(try FileDescriptor.open("/dev/null", .readOnly, options: .closeOnExec)) }
            fds.append(pair.1)
        }
        let listenerArgs = monitor != nil ? ["--listener-fd", "\(3 + fds.count - 1)"] : []
        // The probe's stdout goes to the pipe through a shell-free dup: descriptor 3 + n.
        let outIndex = fds.count
        fds.append(out.write)
        let child = try ChildProcess.spawn(
            "/bin/sh", arguments: ["-c", "exec \"$0\" \"$@\" >&\(3 + outIndex)", cloisterExecutable, "role", "sandbox-probe",
                                   "--policy", policy, "--mode", mode, "--attempt", attempt] + listenerArgs + extraArguments,
            descriptors: fds)
        try out.write.close()
        if let handoff {
            try handoff.1.close()
            try monitor?(handoff.0)
            try handoff.0.close()
        }
        let output = String(decoding: try readAll(out.read), as: UTF8.self)
        try out.read.close()
        return Outcome(termination: try child.wait(), output: output)
    }

    func testAllowedWorkSurvives() throws {
        for policy in Self.rolePolicies {
            let outcome = try probe("allowed", policy: policy)
            XCTAssertEqual(outcome.termination, .exited(0), "\(policy): \(outcome.output)")
            XCTAssertEqual(outcome.output, "returned 0 errno 0\n", policy)
        }
    }

    /// Each forbidden action kills the process (SIGSYS, from the kernel in enforce mode), under
    /// every role's profile.
    func testForbiddenActionsAreKilled() throws {
        for policy in Self.rolePolicies {
            for attempt in ["exec", "fork", "vfork", "clone-process", "clone-newuser", "clone3", "thread", "socket-inet", "socket-unix", "socketpair",
                            "ptrace", "kill", "tgkill", "pidfd-open", "io-uring", "tiocsti", "mount", "unshare", "bpf", "keyctl", "userfaultfd",
                            "perf-event-open", "personality", "process-vm-readv", "x32", "i386"] {
                let outcome = try probe(attempt, policy: policy)
                XCTAssertEqual(outcome.termination, .signaled(SIGSYS), "\(policy) \(attempt): \(outcome.output)")
                XCTAssertEqual(outcome.output, "", "\(policy) \(attempt) returned")
            }
        }
    }

    func testConnectToLoopbackListenerIsKilled() throws {
        // A listener the probe would reach, and an unconnected socket made for it here
        // (it cannot make one itself).
        let (listener, port) = loopbackListener(backlog: 1)
        defer { close(listener) }
        let unconnected = FileDescriptor(rawValue: socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0))
        defer { try? unconnected.close() }
        let devNull = try FileDescriptor.open("/dev/null", .readOnly, options: .closeOnExec)
        defer { try? devNull.close() }
        let outcome = try probe("connect", descriptors: [devNull, devNull, unconnected],
                                extraArguments: ["--port", "\(port)"])
        XCTAssertEqual(outcome.termination, .signaled(SIGSYS), outcome.output)
    }

    /// Opening files is refused with EACCES, as OpenSSH does (see the profile's comment).
    func testOpenIsRefused() throws {
        for policy in Self.rolePolicies {
            let outcome = try probe("open", policy: policy)
            XCTAssertEqual(outcome.termination, .exited(0), policy)
            XCTAssertEqual(outcome.output, "returned -1 errno 13\n", policy)
        }
    }

    /// Landlock on its own: with a profile that lets openat through, opening a world-readable
    /// file still fails, and only Landlock can refuse it.
    func testLandlockRefusesWhatSeccompAllows() throws {
        try XCTSkipUnless(cloister_landlock_deny_filesystem_available(), "this kernel has no Landlock")
        var policy = try Policy.load(file: Self.workerPolicy)
        for i in policy.rules.indices { policy.rules[i].names.removeAll { $0 == "openat" } }
        policy.rules.removeAll { $0.names.isEmpty }
        policy.rules.append(Policy.Rule(names: ["openat"], action: .allow, conditions: [], comment: "test", path: "$"))
        let path = NSTemporaryDirectory() + "cloister-openat-\(getpid()).json"
        try policy.json().write(toFile: path, atomically: true, encoding: .utf8)
        defer { unlink(path) }
        XCTAssertEqual(access("/etc/passwd", R_OK), 0)
        let outcome = try probe("open", policy: path)
        XCTAssertEqual(outcome.termination, .exited(0), outcome.output)
        XCTAssertEqual(outcome.output, "returned -1 errno 13\n")
    }

    /// A thread made after the filter, the way any library makes one (pthread_create: its
    /// stack's mapping, then clone3): killed, under every role's profile, and reported in report mode. Threads.start
    /// refuses instead of asking the kernel once creation is closed (the probe keeps no
    /// reserve).
    func testAThreadAfterTheFilterIsKilled() throws {
        for policy in Self.rolePolicies {
            let outcome = try probe("thread", policy: policy)
            XCTAssertEqual(outcome.termination, .signaled(SIGSYS), "\(policy): \(outcome.output)")
        }
        let events = EventLog()
        var monitor: ViolationMonitor?
        let outcome = try probe("thread", mode: "report") { handoff in
            let listener = try ListenerHandoff.receive(from: handoff)
            monitor = try ViolationMonitor(listener: listener, role: "probe", mode: .report) { events.append($0) }
        }
        monitor?.waitUntilDone()
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        // A new thread's first call: the mapping of its stack (PROT_NONE, then its guard), or
        // clone3 itself when glibc reuses a cached stack.
        XCTAssertTrue(["mmap", "clone3"].contains(events.all.first?.syscall ?? ""), "\(events.all.map(\.description))")
        let refused = try probe("reserve-thread")
        XCTAssertEqual(refused.termination, .exited(0))
        XCTAssertEqual(refused.output, "returned -1 errno \(EAGAIN)\n")
    }

    /// As a template's worker: confined in the parent, forked, sealed in the child under the
    /// worker's compiled profile. The child's thread or fork after its seal is killed, and
    /// what it may do still works.
    func testAForkedChildSealsItselfAndAThreadOrForkAfterIsKilled() throws {
        for attempt in ["thread", "clone-process", "clone3"] {
            let outcome = try probe(attempt, extraArguments: ["--forked"])
            XCTAssertEqual(outcome.termination, .exited(0), "\(attempt): \(outcome.output)")
            XCTAssertEqual(outcome.output, "forked child \(ChildProcess.Termination.signaled(SIGSYS))\n", attempt)
        }
        let allowed = try probe("allowed", extraArguments: ["--forked"])
        XCTAssertEqual(allowed.output, "returned 0 errno 0\nforked child exited with status 0\n")
        // Its seal names its threads as counted from outside, not from its template's directory.
        let steps = try probe("steps", extraArguments: ["--forked"])
        XCTAssertTrue(steps.output.contains("forked: counted by the supervisor"), steps.output)
        XCTAssertTrue(steps.output.contains("forked child exited with status 0"), steps.output)
    }

    /// The probe's own account of its sandbox names the threads it had when it sealed.
    func testStepsNameTheThreadsAtTheSeal() throws {
        let outcome = try probe("steps")
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertTrue(outcome.output.contains("clone and clone3 killed from now on"), outcome.output)
    }

    /// Report mode: the parent holds the listener, sees which syscall with which arguments,
    /// and kills the offender.
    func testViolationIsReportedAndKilledByParent() throws {
        let events = EventLog()
        var monitor: ViolationMonitor?
        let outcome = try probe("socket-inet", mode: "report") { handoff in
            let listener = try ListenerHandoff.receive(from: handoff)
            monitor = try ViolationMonitor(listener: listener, role: "probe", mode: .report) { events.append($0) }
        }
        monitor?.waitUntilDone()
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        let event = try XCTUnwrap(events.all.first)
        XCTAssertEqual(event.syscall, "socket")
        XCTAssertEqual(event.number, 41)
        XCTAssertEqual(event.arguments[0], UInt64(AF_INET))
        XCTAssertEqual(event.role, "probe")
        XCTAssertEqual(event.outcome, "killed")
        XCTAssertEqual(event.architecture, "x86_64")
        XCTAssertTrue(event.description.contains("called socket (x86_64 41) with (0x2, 0x1"), event.description)

        let lines = CapturedLog()
        event.log(to: Logger(label: "cloister.supervisor") { _ in lines })
        let line = try XCTUnwrap(lines.entries.first)
        XCTAssertEqual(line.level, .error)
        XCTAssertEqual(line.message, "sandbox violation")
        XCTAssertEqual(line.metadata["role"], "probe")
        XCTAssertEqual(line.metadata["syscall"], "socket")
        XCTAssertEqual(line.metadata["syscall_nr"], "41")
        XCTAssertEqual(line.metadata["pid"], "\(event.pid)")
        XCTAssertTrue(line.metadata["args"]?.description.hasPrefix("0x2, 0x1, ") ?? false)
    }

    func testSandboxStepsAsRoot() throws {
        try XCTSkipUnless(geteuid() == 0, "switching uid and emptying the bounding set need root")
        let outcome = try probe("steps")
        XCTAssertEqual(outcome.termination, .exited(0), outcome.output)
        XCTAssertTrue(outcome.output.contains("identity: nobody:nogroup"), outcome.output)
        XCTAssertTrue(outcome.output.contains("bounding empty"), outcome.output)
        XCTAssertTrue(outcome.output.contains("seccomp: \(Self.workerPolicy) loaded (enforce, all threads)"), outcome.output)
    }
}


final class EventLog: Sendable {
    private let events = Mutex<[ViolationMonitor.Event]>([])
    func append(_ e: ViolationMonitor.Event) { events.withLock { $0.append(e) } }
    var all: [ViolationMonitor.Event] { events.withLock { $0 } }
}

extension FileDescriptor {
    static func socketPairForHandoff() throws -> (FileDescriptor, FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw Errno(rawValue: errno)
        }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }
}

/// Whether the running kernel offers Landlock (its ruleset ABI version is positive).
func cloister_landlock_deny_filesystem_available() -> Bool {
    let abi = cloister_syscall6(444 /* landlock_create_ruleset */, 0, 0, 1 /* VERSION */, 0, 0, 0)
    return abi > 0
}
