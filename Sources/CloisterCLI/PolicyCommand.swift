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
        subcommands: [Roles.self, Compose.self, Check.self, Explain.self, Export.self, Learn.self])

    /// Writes each role's shipped profile from its bases: the shared rules, then its own.
    struct Compose: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write each sandboxed role's profile from policies/base: common.json, then the role's own rules.",
            discussion: "With --check, writes nothing and fails naming each profile that differs from its bases (what make test runs).")
        @Option(help: "Directory of common.json and each role's own <role>.json.") var baseDir = "policies/base"
        @Option(help: "Directory to write <role>.json into.") var outDir = "policies"
        @Flag(help: "Compare instead of writing.") var check = false

        func run() throws {
            var stale: [String] = []
            for profile in RoleDeclaration.profiles() {
                let composed = try Policy.composed(directory: baseDir, common: RoleDeclaration.commonProfile, file: profile).json()
                let out = "\(outDir)/\(profile)"
                if check {
                    let shipped = try? String(contentsOfFile: out, encoding: .utf8)
                    if shipped != composed { stale.append(out) }
                } else {
                    try writeAtomically(composed, to: out)
                    printToStandardError("compose: \(out) written\n")
                }
            }
            if !stale.isEmpty {
                printToStandardError("compose: not what \(baseDir) composes (run cloister policy compose): \(stale.joined(separator: ", "))\n")
                throw ExitCode(1)
            }
        }
    }

    /// The sandboxed roles as declared (`RoleDeclaration.sandboxed`): what install installs
    /// and what the docs' table shows.
    struct Roles: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the sandboxed roles: profile file, threads, descriptors, settings.")
        enum Format: String, ExpressibleByArgument { case table, files, markdown }
        @Option(help: "table (for people), files (one profile file name a line, for install) or markdown (the docs' table).")
        var format: Format = .table

        func run() {
            print(Self.render(RoleDeclaration.sandboxed, format: format), terminator: "")
        }

        static func render(_ declarations: [RoleDeclaration], format: Format) -> String {
            switch format {
            case .files: return RoleDeclaration.profiles(declarations).map { $0 + "\n" }.joined()
            case .table: return RoleDeclaration.table(declarations)
            case .markdown: return RoleDeclaration.markdownTable(declarations)
            }
        }
    }

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
        @Option(help: "Role to learn: \(RoleDeclaration.sandboxed.filter(\.sealed).map(\.role.rawValue).joined(separator: ", ")) or all.") var role = "all"
        @Option(help: "A certificate the learning server serves TLS with (on a second listener), so that the keyholder is learned too; with --tls-key.")
        var tlsCert: String?
        @Option(help: "The certificate's key (readable by its owner alone).") var tlsKey: String?
        @Option(help: "Directory to write <role>.json into.") var outDir = "policies"
        @Option(help: "Directory of the reviewed bases: common.json, the rules every role shares, and <role>.json, each role's own.") var baseDir = "policies/base"
        @Option(help: "With one --role: the file to write (instead of --out-dir).") var out: String?
        @Option(help: "With one --role: the profile to start from (default: --out if it exists, else the base in --base-dir).")
        var base: String?
        @Option(help: "Concurrent workload runs per round.") var sessions: Int = 4
        @Option(help: "Rounds, each with a fresh server; what any round used is kept (rare paths show up in some only).")
        var rounds: Int = 3
        @OptionGroup var assets: AssetOptions

        func validate() throws {
            let names = RoleDeclaration.sandboxed.filter(\.sealed).map(\.role.rawValue)
            guard names.contains(role) || role == "all" else { throw ValidationError("--role must be \(names.joined(separator: ", ")) or all") }
            guard (tlsCert == nil) == (tlsKey == nil) else { throw ValidationError("--tls-cert and --tls-key go together") }
            if let d = RoleDeclaration.of(Role(rawValue: role)), !d.runs(with: options) {
                throw ValidationError(d.onlyWith == .tls ? "--role \(role) needs --tls-cert and --tls-key: the \(role) runs only with TLS"
                                      : "--role \(role) is not learned: it runs only with --record, which a learning server does not; its profile is composed by hand (cloister policy compose)")
            }
            if role == "all" && (out != nil || base != nil) { throw ValidationError("--out and --base need a single --role") }
            guard sessions > 0 else { throw ValidationError("--sessions must be positive") }
            guard rounds > 0 else { throw ValidationError("--rounds must be positive") }
        }

        func run() async throws {
            let all = learned.map(\.role.rawValue)
            let roles = role == "all" ? all : [role]
            // The roles run under their bases, composed into files of their own for the run.
            let scratch = try Self.scratchDirectory()
            defer { for r in all { unlink("\(scratch)/\(r).json") }; rmdir(scratch) }
            var bases: [String: Policy] = [:]
            var files: [Role: String] = [:]
            for d in learned {
                let r = d.role.rawValue
                if let given = givenBase(r) {
                    bases[r] = try Policy.load(file: given)
                    files[d.role] = given
                } else {
                    bases[r] = try Policy.composed(directory: baseDir, common: RoleDeclaration.commonProfile, file: d.profile)
                    files[d.role] = "\(scratch)/\(d.profile)"
                    try writeAtomically(bases[r]!.json(), to: files[d.role]!)
                }
            }
            var syscalls: [String: Set<String>] = [:]
            var arguments: [String: [String: Set<UInt64>]] = [:]
            for round in 1...rounds {
                let monitors = try await runRound(RoleProfiles(files: files))
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
                try writeAtomically(merged.policy.json(), to: out)
                for name in merged.added { print("\(r): \(name)") }
                printToStandardError("learn: \(r): \(merged.added.count) new, profile written to \(out)\n")
            }
        }

        /// The roles a learning server runs.
        /// The roles a learning server runs (the template's workers are learned as workers).
        var learned: [RoleDeclaration] { RoleDeclaration.sandboxed.filter { $0.sealed && $0.runs(with: options) } }

        /// What a learning server runs with: TLS when given; never --record.
        var options: Set<RoleDeclaration.Option> { tlsCert != nil ? [.tls] : [] }

        /// A whole profile to start `r` from instead of its composed base: --base, or --out
        /// when it exists, for the one role learned.
        func givenBase(_ r: String) -> String? {
            guard r == role else { return nil }
            if let base { return base }
            if let out, FileManager.default.fileExists(atPath: out) { return out }
            return nil
        }

        static func scratchDirectory() throws -> String {
            var template = Array("/tmp/cloister-learn-XXXXXX".utf8CString)
            guard let made = mkdtemp(&template) else { throw ValidationError("\(lastError("mkdtemp"))") }
            return String(cString: made)
        }

        /// One server under the base profiles in learn mode, with the workload flowing
        /// through it; returns the monitors of every role instance that ran.
        private func runRound(_ profiles: RoleProfiles) async throws -> [String: [ViolationMonitor]] {
            var logger = Logger(label: "cloister.learn")
            logger.logLevel = .critical  // every recorded syscall would be a line
            let password = ServeCommand.randomPassword()
            var c = Server.Configuration(profiles: profiles,
                                         nursery: .spawn(NurseryShells(user: nil, group: nil, login: false, terminalType: "xterm-256color",
                                                                       workingDirectory: nil, command: ["/bin/sh"])))
            c.listen = ["127.0.0.1:0"]
            if let tlsCert, let tlsKey {
                c.listen.append(Server.tlsPrefix + "127.0.0.1:0")
                do {
                    c.tls = try ServeCommand.tls(certificate: tlsCert, key: tlsKey, command: "policy learn")
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
            let pools = [server.workers, server.vault] + (server.keyholder.map { [$0] } ?? [])
            return Dictionary(uniqueKeysWithValues: pools.map { ($0.configuration.role.rawValue, $0.monitors) })
        }
    }
}

extension FileDescriptor {
    static var standardOutput: FileDescriptor { FileDescriptor(rawValue: 1) }
}
