import ArgumentParser
import Circuits
import Foundation
import Processes
import Sandbox
import Supervisor
import SystemPackage

struct PolicyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Check, explain, export and learn seccomp profiles (OCI JSON).",
        subcommands: [Check.self, Explain.self, Export.self, Learn.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate and compile profiles; print a summary and warn about dangerous allowances.")
        @Argument(help: "Profiles to check.") var files: [String]

        func run() throws {
            var failed = false
            for file in files {
                do {
                    let policy = try Policy.load(file: file)
                    _ = try SeccompProgram(policy)
                    print(policy.summary)
                    let warnings = policy.warnings + policy.conflicts
                    for warning in warnings { print("  warning: \(warning)") }
                    print(warnings.isEmpty ? "  ok" : "  ok, with \(warnings.count) warning(s)")
                } catch {
                    failed = true
                    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
                }
            }
            if failed { throw ExitCode(1) }
        }
    }

    struct Explain: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show which rule decides a syscall, and the action.")
        @Argument(help: "Profile.") var file: String
        @Argument(help: "Syscall name.") var syscall: String
        @Argument(help: "Arguments, decimal or 0x-hex (missing ones are 0).") var args: [String] = []

        func run() throws {
            let policy = try Policy.load(file: file)
            guard SyscallTable.number(syscall) != nil else { throw ValidationError("unknown syscall \"\(syscall)\"") }
            let values = try args.map { text -> UInt64 in
                let parsed = text.hasPrefix("0x") ? UInt64(text.dropFirst(2), radix: 16) : UInt64(text)
                guard let parsed else { throw ValidationError("argument \"\(text)\" is not a number") }
                return parsed
            }
            guard values.count <= 6 else { throw ValidationError("a syscall has at most 6 arguments") }
            let verdict = policy.explain(syscall, args: values)
            print("\(syscall): \(verdict.action)")
            print("  \(verdict.reason)")
        }
    }

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write libseccomp's pseudo-filter code or the raw BPF program to stdout.")
        enum Format: String, ExpressibleByArgument { case pfc, bpf }
        @Argument(help: "Profile.") var file: String
        @Option(help: "pfc (readable) or bpf (raw program).") var format: Format = .pfc

        func run() throws {
            let program = try SeccompProgram(try Policy.load(file: file))
            switch format {
            case .pfc: try program.exportPFC(to: .standardOutput)
            case .bpf: try program.exportBPF(to: .standardOutput)
            }
        }
    }

    struct Learn: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a role with unlisted syscalls recorded instead of fatal while work flows through it, then write the profile it needs.",
            discussion: """
            The role runs its real code under the base profile with the default action turned into a \
            notification that this process records and lets through; explicit rules, among them the \
            syscalls no role may make, keep their actions. The result is the base profile plus what \
            was used; new syscalls are listed on stdout. Review the diff before committing it.
            """)
        @Option(help: "Role to run: worker.") var role: String
        @Option(help: "Where to write the profile.") var out: String
        @Option(help: "Profile to start from (default: --out).") var base: String?
        @Option(help: "Client connections to drive through the role per round.") var connections: Int = 16
        @Option(help: "Times to run the role; what any run used is kept (rare paths show up in some runs only).")
        var rounds: Int = 3
        @Option(help: "User to switch the role to when run as root.") var user: String = "nobody"
        @Option(help: "Group to switch the role to when run as root.") var group: String = "nogroup"

        func validate() throws {
            guard role == "worker" else { throw ValidationError("--role must be worker (the roles that run sandboxed)") }
            guard connections > 0 else { throw ValidationError("--connections must be positive") }
            guard rounds > 0 else { throw ValidationError("--rounds must be positive") }
        }

        func run() async throws {
            let basePath = base ?? out
            let basePolicy = try Policy.load(file: basePath)
            var syscalls: Set<String> = []
            var arguments: [String: Set<UInt64>] = [:]
            for round in 1...rounds {
                let monitor = try await runRound(policy: basePath)
                syscalls.formUnion(monitor.syscalls)
                arguments.merge(monitor.arguments) { $0.union($1) }
                FileHandle.standardError.write(Data("learn: round \(round) of \(rounds) done\n".utf8))
            }
            let merged = basePolicy.merging(learned: syscalls, arguments: arguments, role: role)
            if !merged.refused.isEmpty {
                throw ValidationError("the role used syscalls no sandboxed role may have: \(merged.refused.joined(separator: ", ")); nothing written")
            }
            try Self.write(merged.policy.json(), to: out)
            for name in merged.added { print(name) }
            FileHandle.standardError.write(Data("learn: \(merged.added.count) new, profile written to \(out)\n".utf8))
        }

        /// Runs the role once under `policy` in learn mode with the workload flowing through
        /// it; returns the monitor holding what it used.
        private func runRound(policy: String) async throws -> ViolationMonitor {
            let launched = try await RoleLauncher.start(
                executable: ChildProcess.currentExecutable, role: role, policy: policy, mode: .learn, user: user, group: group
            ) { event in
                FileHandle.standardError.write(Data("learn: \(event.syscall) (\(event.number))\n".utf8))
            }
            let (child, transport, monitor) = (launched.child, launched.transport, launched.monitor)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<connections {
                    group.addTask { try await Self.driveClient(transport, bytes: 1024 * (i + 1)) }
                }
                try await group.waitForAll()
            }
            transport.close()
            let termination = try await onOwnThread { try child.wait() }
            monitor.waitUntilDone()
            guard termination == .exited(0) else {
                throw ValidationError("the role did not finish cleanly (\(termination)); nothing written")
            }
            return monitor
        }

        /// One client: a stream socketpair whose far end the worker gets over a circuit.
        static func driveClient(_ transport: Transport<UInt16>, bytes: Int) async throws {
            let (client, server) = try SocketCalls.socketPair(.stream)
            defer { try? client.close() }
            let circuit = try transport.open()
            try await circuit.send([], descriptors: [server])
            try server.close()
            let payload = [UInt8](repeating: 0x61, count: bytes)
            let echoed: [UInt8] = try await onOwnThread {
                _ = try payload.withUnsafeBytes { try client.writeAll($0) }
                _ = shutdown(client.rawValue, Int32(SHUT_WR))
                return try client.readToEnd()
            }
            guard echoed == payload else { throw ValidationError("the worker echoed \(echoed.count) of \(bytes) bytes") }
            let report = try await circuit.receive()
            guard String(decoding: report.payload, as: UTF8.self) == "\(bytes)" else {
                throw ValidationError("the worker reported \(String(decoding: report.payload, as: UTF8.self)) bytes, expected \(bytes)")
            }
            try await circuit.send([], end: true)
        }

        /// Written next to the target and renamed over it, so a failed write never leaves a
        /// half profile; readable by all, writable by the owner.
        static func write(_ text: String, to path: String) throws {
            let temporary = path + ".tmp-\(getpid())"
            guard FileManager.default.createFile(atPath: temporary, contents: Data(text.utf8),
                                                 attributes: [.posixPermissions: 0o644]) else {
                throw ValidationError("cannot write \(temporary)")
            }
            guard rename(temporary, path) == 0 else {
                unlink(temporary)
                throw ValidationError("cannot rename \(temporary) to \(path): \(Errno(rawValue: errno))")
            }
        }
    }
}

extension FileDescriptor {
    static var standardOutput: FileDescriptor { FileDescriptor(rawValue: 1) }
}
