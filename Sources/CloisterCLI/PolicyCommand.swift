import ArgumentParser
import Circuits
import FoundationEssentials
import Processes
import RoleProtocol
import Sandbox
import Supervisor
import TerminalClient
import Vault
import Logging
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

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
                    printToStandardError("error: \(error)\n")
                }
            }
            if failed { throw ExitCode(1) }
        }
    }

    struct Explain: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show which rule decides a syscall, and the action, and how many system calls the profile allows.")
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
            // The size of what the profile allows, so a reviewer sees how much is open at all.
            print("  \(file) allows \(policy.allowedSyscalls.count) system calls (cloister policy check lists the conditions)")
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
            abstract: "Serve real traffic with the sandboxed roles recording unlisted syscalls instead of dying, then write the profiles they need.",
            discussion: """
            Runs a complete server on a loopback port (supervisor, vault, nursery, workers) with \
            the roles under their base profiles in learn mode: the default action becomes a \
            notification that the supervisor records and lets through; explicit rules, among them \
            the syscalls no role may make, keep their actions. The workload is the integration \
            tests' traffic (every HTTP route and refusal, ttyd sessions that echo, resize, pause, \
            stream output and end both ways, WebSocket protocol violations). Each profile written \
            is its base plus what the role used; new syscalls are listed on stdout. Review the \
            diff before committing it.
            """)
        @Option(help: "Role to learn: worker, vault, keyholder or all.") var role = "all"
        @Option(help: "A certificate the learning server serves TLS with (on a second listener), so that the keyholder is learned too; with --tls-key.")
        var tlsCert: String?
        @Option(help: "The certificate's key (readable by its owner alone).") var tlsKey: String?
        @Option(help: "Directory to write <role>.json into.") var outDir = "policies"
        @Option(help: "Directory of the reviewed base profiles <role>.json.") var baseDir = "policies/base"
        @Option(help: "With one --role: the file to write (instead of --out-dir).") var out: String?
        @Option(help: "With one --role: the profile to start from (default: --out if it exists, else the base in --base-dir).")
        var base: String?
        @Option(help: "Concurrent workload runs per round.") var sessions: Int = 4
        @Option(help: "Rounds, each with a fresh server; what any round used is kept (rare paths show up in some only).")
        var rounds: Int = 3
        @OptionGroup var assets: AssetOptions

        func validate() throws {
            guard ["worker", "vault", "keyholder", "all"].contains(role) else { throw ValidationError("--role must be worker, vault, keyholder or all") }
            guard (tlsCert == nil) == (tlsKey == nil) else { throw ValidationError("--tls-cert and --tls-key go together") }
            if role == "keyholder" && tlsCert == nil { throw ValidationError("--role keyholder needs --tls-cert and --tls-key: the keyholder runs only with TLS") }
            if role == "all" && (out != nil || base != nil) { throw ValidationError("--out and --base need a single --role") }
            guard sessions > 0 else { throw ValidationError("--sessions must be positive") }
            guard rounds > 0 else { throw ValidationError("--rounds must be positive") }
        }

        func run() async throws {
            let all = ["worker", "vault"] + (tlsCert != nil ? ["keyholder"] : [])
            let roles = role == "all" ? all : [role]
            var bases: [String: Policy] = [:]
            for r in all { bases[r] = try Policy.load(file: basePath(r)) }
            var syscalls: [String: Set<String>] = [:]
            var arguments: [String: [String: Set<UInt64>]] = [:]
            for round in 1...rounds {
                let monitors = try await runRound()
                for (r, list) in monitors {
                    for monitor in list {
                        syscalls[r, default: []].formUnion(monitor.syscalls)
                        arguments[r, default: [:]].merge(monitor.arguments) { $0.union($1) }
                    }
                }
                printToStandardError("learn: round \(round) of \(rounds) done\n")
            }
            for r in roles {
                let merged = bases[r]!.merging(learned: syscalls[r] ?? [], arguments: arguments[r] ?? [:], role: r)
                if !merged.refused.isEmpty {
                    throw ValidationError("the \(r) used syscalls no sandboxed role may have: \(merged.refused.joined(separator: ", ")); nothing written")
                }
                let out = self.out ?? "\(outDir)/\(r).json"
                try Self.write(merged.policy.json(), to: out)
                for name in merged.added { print("\(r): \(name)") }
                printToStandardError("learn: \(r): \(merged.added.count) new, profile written to \(out)\n")
            }
        }

        /// The profile a role runs under while learning, and that the result extends.
        func basePath(_ r: String) -> String {
            guard r == role else { return "\(baseDir)/\(r).json" }
            if let base { return base }
            if let out, FileManager.default.fileExists(atPath: out) { return out }
            return "\(baseDir)/\(r).json"
        }

        /// One server under the base profiles in learn mode, with the workload flowing
        /// through it; returns the monitors of every role instance that ran.
        private func runRound() async throws -> [String: [ViolationMonitor]] {
            var logger = Logger(label: "cloister.learn")
            logger.logLevel = .critical  // every recorded syscall would be a line
            let password = ServeCommand.randomPassword()
            var c = Server.Configuration(workerPolicy: basePath("worker"), vaultPolicy: basePath("vault"),
                                         nursery: .spawn(NurseryShells(user: nil, group: nil, login: false, terminalType: "xterm-256color",
                                                                       workingDirectory: nil, command: ["/bin/sh"])))
            c.listen = ["127.0.0.1:0"]
            if let tlsCert, let tlsKey {
                c.listen.append(Server.tlsPrefix + "127.0.0.1:0")
                do {
                    c.tls = try ServeCommand.tls(certificate: tlsCert, key: tlsKey, keyholderPolicy: basePath("keyholder"), command: "policy learn")
                } catch {
                    throw ValidationError("\(error)")
                }
            }
            c.workers = 2
            c.credential = Credential(userAndPassword: "learn:\(password)").token
            c.mode = .learn
            do {
                c.assets = try assets.sealedFile()
            } catch {
                throw ValidationError("\(error.option): \(error.problem)")
            }
            defer { try? c.assets?.close() }
            let server = try Server(configuration: c, logger: logger)
            await server.start()
            let port = Listener.parse(server.listeners[0].address)!.port
            let deadline = ContinuousClock.now + .seconds(30)
            let tlsPort = server.listeners.count > 1 ? Listener.parse(server.listeners[1].address)?.port : nil
            while !(server.workers.slots.allSatisfy { $0.state == .running } && server.vault.slots.allSatisfy { $0.state == .running }
                    && (server.keyholder?.slots.allSatisfy { $0.state == .running } ?? true)) {
                guard ContinuousClock.now < deadline else {
                    await server.drain(timeout: .zero)
                    throw ValidationError("the roles did not start within 30 s")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            let sessions = self.sessions
            do {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<sessions {
                        group.addTask { try await onOwnThread { try Workload.run(port: port, userAndPassword: "learn:\(password)") } }
                        if let tlsPort {
                            group.addTask {
                                try await onOwnThread { try Workload.session(port: tlsPort, token: TerminalClient.token("learn:\(password)"), tls: true) }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
            } catch {
                await server.drain(timeout: .zero)
                throw ValidationError("the workload failed: \(error); nothing written")
            }
            await server.drain(timeout: .seconds(5))
            return ["worker": server.workers.monitors, "vault": server.vault.monitors, "keyholder": server.keyholder?.monitors ?? []]
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
                throw ValidationError("cannot rename \(temporary) to \(path): \(lastError("rename"))")
            }
        }
    }
}

extension FileDescriptor {
    static var standardOutput: FileDescriptor { FileDescriptor(rawValue: 1) }
}
