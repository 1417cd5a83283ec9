import ArgumentParser
import CShim
import Circuits
import FoundationEssentials
import Logging
import Processes
import RoleProtocol
import Sandbox
import Supervisor
import SystemCalls
import SystemPackage
import Vault
import Worker

#if canImport(Glibc)
import Glibc
#endif

/// `cloister serve`: the supervisor.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve terminals over WebSocket (ttyd's protocol) through sandboxed workers.",
        discussion: """
        Bad options or configuration print one line naming the option and exit with status 2, \
        before anything is started. SIGTERM and SIGINT drain: no new clients, open ones get \
        --drain-timeout seconds, then every process is stopped and reaped. SIGHUP re-reads the \
        credential file and renews the workers as their clients leave.
        """)

    @Option(name: .customLong("listen"), help: "HOST:PORT, [IPV6]:PORT or unix:/PATH to listen on (repeatable).")
    var listen: [String] = []
    @Option(help: "USER[:GROUP] owning unix listeners' socket files (ttyd's -U; only as root).") var socketOwner: String?
    @Option(help: "Mode of unix listeners' socket files, in octal.") var socketMode = "660"
    @Option(help: "With --isolation pool (which giving it selects): the number of sandboxed workers, each serving many clients (default: the number of online CPUs).")
    var workers: Int?
    @Option(help: "client (the default): every connection gets a worker process of its own, which exits when its client leaves; pool: each worker serves many clients (selected by --workers too).")
    var isolation: RolePool.Isolation?
    @Option(help: "With --isolation client: workers kept started and sandboxed, ready for the next connections (1 to 256; default 4).")
    var spareWorkers: Int?
    @Option(help: "With --isolation client: fork (each worker forked from a confined template: cheap, siblings share its address layout) or spawn (each started from the binary: its own layout, about 3 times the memory and the start-up time).")
    var workerStart: WorkerStart = .fork

    enum WorkerStart: String, ExpressibleByArgument { case fork, spawn }
    @Option(help: "USER:PASSWORD clients must present (ttyd's -c). Default: a one-time credential, printed.")
    var credential: String?
    @Option(help: "A file holding USER:PASSWORD (one line, not readable by group or others), instead of --credential.")
    var credentialFile: String?
    @Option(help: "A file of web users, USER:HASH per line with crypt(3) hashes (mkpasswd, openssl passwd -6), not readable by group or others, instead of one credential.")
    var usersFile: String?
    @Option(help: "Leave authentication to a reverse proxy that names the user in this header (ttyd's -H); only safe when clients can reach Cloister through that proxy alone.")
    var authHeader: String?
    @Flag(inversion: .prefixedNo, help: "Refuse WebSocket handshakes whose Origin differs from Host.")
    var checkOrigin = true
    @Option(help: "Most clients connected at once; more are answered 503 with Retry-After.") var maxClients = 1024
    @Option(help: "START:RATE:FULL for connections that have not authenticated (OpenSSH's MaxStartups): from START on, each new one is refused with a chance growing from RATE % to 100 % at FULL.")
    var maxUnauthenticated = "32:30:128"
    @Option(help: "Most connections from one source (an IPv4 address, an IPv6 /64) that have not authenticated.")
    var maxUnauthenticatedPerSource = 16
    @Option(help: "Seconds a connection has to present a valid credential before it is closed (OpenSSH's LoginGraceTime).")
    var authenticationDeadline: Double = 30
    @Option(help: "Seconds a TCP connection may stay silent before it is accepted at all (TCP_DEFER_ACCEPT); 0: accept at once.")
    var deferAccept = 10
    @Option(name: .customLong("client-option"),
            help: "KEY=VALUE sent to the page in the preferences message (ttyd's -t), e.g. fontSize=18; repeatable. A VALUE that is JSON is sent as JSON.")
    var clientOptions: [String] = []
    @Option(help: "Seconds between pings of each WebSocket (ttyd's -P); one unanswered at the next ping is closed, its session detached. 0: no pings.")
    var pingInterval: Double = 30
    @Flag(name: .customLong("url-arg"),
          help: "A new session's command gets the arg values of the page's URL appended, as separate arguments, never through a shell (ttyd's -a); at most 16 of 255 bytes.")
    var urlArguments = false
    @Option(help: "Signal for a shell whose session is hung up, by name or number (ttyd's -s): HUP (the default), TERM, INT, QUIT, KILL, USR1, USR2…")
    var signal = "HUP"
    @Flag(help: "Every client only watches: nobody's input reaches a shell (ttyd's default without -W).") var readOnly = false
    @Flag(help: "Take one client at a time (others get 1013) and stop when it leaves (ttyd's -o).") var once = false
    @Flag(help: "Stop when the last client leaves, once one has come (ttyd's -q).") var exitNoClients = false
    @Option(help: "Serve every route under this prefix, e.g. /terminal (ttyd's --base-path), behind a reverse proxy's sub-path.")
    var basePath: String?
    @Option(help: "The control socket for cloister ctl.") var controlSocket: String = ControlCommand.defaultSocket
    @Option(help: "A group whose members may use the control socket without being root (the socket is then mode 0660 in that group).")
    var controlGroup: String?
    @Option(help: "Directory with each sandboxed role's profile: \(RoleDeclaration.profiles().joined(separator: ", ")) (cloister policy roles lists them). Default: \(RoleProfiles.defaultDirectories.joined(separator: ", then ")).")
    var policyDir: String?
    @Option(help: "Seconds open connections get to finish on SIGTERM.") var drainTimeout: Double = 10
    @Option(help: "A PEM certificate chain, the server's certificate first: TLS (1.2 and 1.3, HTTP/1.1 by ALPN) on every --listen, or only on those given as tls:ADDRESS. SIGHUP reads it again.")
    var tlsCert: String?
    @Option(help: "The certificate's private key, PEM (RSA of 2048 bits or more, ECDSA P-256 or P-384), readable by its owner alone. Only the keyholder role reads it; the workers never hold it.")
    var tlsKey: String?
    @Option(help: "Signatures a second the keyholder makes for each worker's handshakes (twice as many at once); more are refused and counted (1 to 100000).")
    var tlsSignaturesPerSecond = 500
    @Flag(help: "Hand every session's terminal and ring to systemd's fd store (the unit sets FileDescriptorStoreMax=), so that a restart of the service keeps them.")
    var fdStore = false
    @Option(help: "HOST:PORT where a load balancer polls this host: 200 ready, 404 draining (no new session; its own still served), 503 starting or full; no credential, nothing else said.")
    var healthListen: String?
    @Option(help: "ADDRESS (numeric; repeatable) of a proxy in front: the last X-Forwarded-For entry of its connections goes into the audit trail as forwarded_for, vouched for by the worker; from any other address the header is ignored.")
    var trustedProxy: [String] = []
    @Option(help: "Append every audited fact (credentials checked, sessions started, joined, left and ended, control actions, violations, restarts) to FILE as JSON lines, created mode 0600; they go to the log either way.")
    var auditLog: String?
    @Option(help: "report (violations are logged and kill the role) or learn.") var policyMode: EnforcementMode = .report
    @OptionGroup var sessions: SessionOptions
    @OptionGroup var recording: RecordingOptions
    @OptionGroup var assetOptions: AssetOptions
    @Option(help: "The nursery service's socket (`cloister nursery`): shells come from it instead of a nursery this process starts; whom they run as and what they run is set there.")
    var nurserySocket: String?
    @OptionGroup var shell: ShellOptions

    struct ConfigurationError: Error, CustomStringConvertible {
        var option: String
        var problem: String
        var command = "serve"
        var description: String { "cloister \(command): \(option): \(problem)" }
    }

    /// A signal by number, or by name with or without SIG, in any case.
    static func signalNumber(_ text: String) -> Int32? {
        if let number = Int32(text) { return (1...64).contains(number) ? number : nil }
        var name = text.uppercased()
        if name.hasPrefix("SIG") { name.removeFirst(3) }
        let names: [String: Int32] = [
            "HUP": SIGHUP, "INT": SIGINT, "QUIT": SIGQUIT, "KILL": SIGKILL, "USR1": SIGUSR1, "USR2": SIGUSR2,
            "TERM": SIGTERM, "CONT": SIGCONT, "STOP": SIGSTOP, "ALRM": SIGALRM, "PIPE": SIGPIPE,
        ]
        return names[name]
    }

    /// ttyd's rule for -t: KEY=VALUE pairs into one JSON object, each VALUE parsed as JSON
    /// where it is JSON (numbers, true, objects…) and sent as a string otherwise.
    static func preferences(_ options: [String]) throws(ConfigurationError) -> String {
        var object: [String: JSONValue] = [:]
        for option in options {
            guard let equals = option.firstIndex(of: "="), equals != option.startIndex else {
                throw ConfigurationError(option: "--client-option", problem: "\"\(option)\" is not KEY=VALUE")
            }
            let key = String(option[..<equals]), text = String(option[option.index(after: equals)...])
            object[key] = (try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))) ?? .string(text)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(object), let json = String(data: data, encoding: .utf8) else {
            throw ConfigurationError(option: "--client-option", problem: "cannot be written as JSON")
        }
        guard json.utf8.count <= 16 * 1024 else {
            throw ConfigurationError(option: "--client-option", problem: "\(json.utf8.count) bytes of JSON, more than 16384")
        }
        return json
    }

    /// Everything checked before anything starts.
    /// `reload`: for SIGHUP, which takes the credential and the TLS pair alone; the page's
    /// assets are read only at start (a reload made a sealed file of them nobody closed).
    func configuration(activated: Bool = false, reload: Bool = false) throws(ConfigurationError) -> (Server.Configuration, credentialLine: String?) {
        // Every role this server will start, and only those: the keyholder's profile is
        // needed with TLS alone, the recorder's with --record alone.
        let recordingTerms = try recording.checked()
        let options = Set([tlsCert != nil || tlsKey != nil ? .tls : nil, recordingTerms != nil ? .recording : nil].compactMap { $0 } as [RoleDeclaration.Option])
        let declarations = RoleDeclaration.sandboxed.filter { $0.runs(with: options) }
        guard let directory = policyDir ?? RoleProfiles.find(for: declarations) else {
            let files = declarations.map(\.profile).joined(separator: ", ")
            throw ConfigurationError(option: "--policy-dir", problem: "not given, and no directory of \(RoleProfiles.defaultDirectories.joined(separator: ", ")) holds \(files) (relative to \(FileManager.default.currentDirectoryPath))")
        }
        let profiles: RoleProfiles
        do {
            profiles = try RoleProfiles(directory: directory, declarations: declarations)
        } catch {
            throw ConfigurationError(option: "--policy-dir", problem: "\(error)")
        }
        let shells: NurseryShells?
        if let nurserySocket {
            guard nurserySocket.hasPrefix("/") else {
                throw ConfigurationError(option: "--nursery-socket", problem: "\"\(nurserySocket)\" is not an absolute path")
            }
            if let given = shell.given {
                throw ConfigurationError(option: given, problem: "the nursery service at --nursery-socket starts the shells: give it to `cloister nursery` there")
            }
            shells = nil
        } else {
            shells = try shell.shells(for: "serve")
        }
        let count: Int
        // --workers alone selects the pool, as it did when the pool was the default.
        let isolation = self.isolation ?? (workers != nil ? .pool : .perClient)
        switch isolation {
        case .pool:
            if spareWorkers != nil {
                throw ConfigurationError(option: "--spare-workers", problem: "only with --isolation client (a pool has --workers)")
            }
            count = workers ?? max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
            guard (1...256).contains(count) else { throw ConfigurationError(option: "--workers", problem: "\(count) is not between 1 and 256") }
        case .perClient:
            if workers != nil {
                throw ConfigurationError(option: "--workers", problem: "not with --isolation client, where each connection has a worker of its own: give --spare-workers")
            }
            count = spareWorkers ?? 4
            guard (1...256).contains(count) else { throw ConfigurationError(option: "--spare-workers", problem: "\(count) is not between 1 and 256") }
        }
        guard maxClients >= 1 else { throw ConfigurationError(option: "--max-clients", problem: "must be at least 1") }
        // The roles' open-file limits follow from it and cannot exceed this process's hard limit.
        var files = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &files)
        let needed = max(Server.workerOpenFiles(maxClients: maxClients), Server.vaultOpenFiles(maxClients: maxClients),
                         Server.supervisorOpenFiles(maxClients: maxClients, isolation: isolation))
        guard files.rlim_max == rlim_t.max || UInt64(needed) <= UInt64(files.rlim_max) else {
            throw ConfigurationError(option: "--max-clients", problem: "\(maxClients) clients need \(needed) open files (the vault's, or with a worker per client the supervisor's); this process may have \(files.rlim_max) (raise the hard limit: ulimit -Hn, or LimitNOFILE= in the unit)")
        }
        let kept = rlim_t(needed)
        if files.rlim_cur < kept {
            files.rlim_cur = files.rlim_max == rlim_t.max ? kept : min(kept, files.rlim_max)
            guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &files) == 0 else {
                throw ConfigurationError(option: "--max-clients", problem: "setrlimit(RLIMIT_NOFILE, \(files.rlim_cur)): errno \(errno)")
            }
        }
        guard !fdStore || getenv("NOTIFY_SOCKET") != nil else {
            throw ConfigurationError(option: "--fd-store", problem: "NOTIFY_SOCKET is not set: the fd store is systemd's, for a unit with Type=notify and FileDescriptorStoreMax=")
        }
        guard drainTimeout >= 0 && drainTimeout.isFinite else { throw ConfigurationError(option: "--drain-timeout", problem: "must be a number of seconds ≥ 0") }
        // Socket-activated, the inherited sockets replace the default address.
        let addresses = listen.isEmpty ? (activated ? [] : ["127.0.0.1:7681"]) : listen
        let plain = addresses.map { $0.hasPrefix(Server.tlsPrefix) ? String($0.dropFirst(Server.tlsPrefix.count)) : $0 }
        if let marked = addresses.first(where: { $0.hasPrefix(Server.tlsPrefix) }), tlsCert == nil {
            throw ConfigurationError(option: "--listen", problem: "\"\(marked)\" asks for TLS: give --tls-cert and --tls-key")
        }
        for address in plain where Listener.parse(address) == nil {
            let path = address.hasPrefix(Listener.unixPrefix) ? String(address.dropFirst(Listener.unixPrefix.count)) : nil
            guard let path else {
                throw ConfigurationError(option: "--listen", problem: "\"\(address)\" is not HOST:PORT, [IPV6]:PORT, :PORT or unix:/PATH")
            }
            guard path.hasPrefix("/"), path.utf8.count < 108 else {
                throw ConfigurationError(option: "--listen", problem: "\"\(address)\": a unix socket needs an absolute path of at most 107 bytes")
            }
        }
        guard let mode = mode_t(socketMode, radix: 8), mode & ~0o777 == 0 else {
            throw ConfigurationError(option: "--socket-mode", problem: "\"\(socketMode)\" is not an octal mode such as 660")
        }
        guard mode & 0o002 == 0 else {
            throw ConfigurationError(option: "--socket-mode", problem: "\(socketMode) lets every local user connect: leave out the write bit for others")
        }
        var access = Listener.SocketAccess(mode: mode)
        if let socketOwner {
            guard geteuid() == 0 else { throw ConfigurationError(option: "--socket-owner", problem: "only applies when started as root") }
            let parts = socketOwner.split(separator: ":", maxSplits: 1).map(String.init)
            guard let user = getpwnam(parts[0]) else { throw ConfigurationError(option: "--socket-owner", problem: "no user \"\(parts[0])\"") }
            access.owner = user.pointee.pw_uid
            access.group = user.pointee.pw_gid
            if parts.count == 2 {
                guard let group = getgrnam(parts[1]) else { throw ConfigurationError(option: "--socket-owner", problem: "no group \"\(parts[1])\"") }
                access.group = group.pointee.gr_gid
            }
        }
        var token: [UInt8]?
        var credentialLine: String?
        if usersFile != nil && (credential != nil || credentialFile != nil || authHeader != nil) {
            throw ConfigurationError(option: "--users-file", problem: "give one of --users-file, --credential, --credential-file and --auth-header")
        }
        if let authHeader {
            guard credential == nil && credentialFile == nil else {
                throw ConfigurationError(option: "--auth-header", problem: "the proxy authenticates: give no --credential or --credential-file")
            }
            guard (1...64).contains(authHeader.count),
                  authHeader.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "!#$%&'*+-.^_`|~".contains($0)) }) else {
                throw ConfigurationError(option: "--auth-header", problem: "\"\(authHeader)\" is not an HTTP header name")
            }
        }
        if credential != nil && credentialFile != nil {
            throw ConfigurationError(option: "--credential-file", problem: "give either --credential or --credential-file")
        }
        let given: String?
        do {
            given = try credentialFile.map(CredentialFile.read) ?? credential
        } catch {
            throw ConfigurationError(option: "--credential-file", problem: "\(error)")
        }
        if let credential = given {
            let option = credentialFile == nil ? "--credential" : "--credential-file"
            guard let colon = credential.firstIndex(of: ":"), colon != credential.startIndex,
                  credential.index(after: colon) != credential.endIndex else {
                throw ConfigurationError(option: option, problem: "expected USER:PASSWORD, both non-empty")
            }
            token = Credential(userAndPassword: credential).token
        } else if authHeader != nil || usersFile != nil {
            token = nil  // no credential: the vault takes the proxy's header or the users' passwords
        } else {
            let password = Self.randomPassword()
            token = Credential(userAndPassword: "cloister:\(password)").token
            credentialLine = "cloister:\(password)"
        }
        var c = Server.Configuration(profiles: profiles, nursery: shells.map { .spawn($0) } ?? .service(socket: nurserySocket!))
        c.listen = addresses
        c.socketAccess = access
        c.workers = count
        c.isolation = isolation
        if isolation == .pool && workerStart != .fork {
            throw ConfigurationError(option: "--worker-start", problem: "only with --isolation client (a pool's workers are always spawned)")
        }
        c.forkWorkers = workerStart == .fork
        c.credential = token
        if let usersFile {
            do {
                c.users = try UsersFile.read(usersFile)
            } catch {
                throw ConfigurationError(option: "--users-file", problem: "\(error)")
            }
        }
        if let shells, shells.accountPerUser, usersFile == nil && authHeader == nil {
            throw ConfigurationError(option: "--account-per-user", problem: "needs web users to map: give --users-file or --auth-header")
        }
        c.checkOrigin = checkOrigin
        c.authHeader = authHeader
        c.preferences = try Self.preferences(clientOptions)
        if once && exitNoClients {
            throw ConfigurationError(option: "--exit-no-clients", problem: "give either --once or --exit-no-clients")
        }
        c.urlArguments = urlArguments
        c.readOnly = readOnly
        guard let number = Self.signalNumber(signal) else {
            throw ConfigurationError(option: "--signal", problem: "\"\(signal)\" is not a signal name or number (1 to 64)")
        }
        c.endSignal = number
        c.exitWhen = once ? .once : exitNoClients ? .noClients : nil
        guard pingInterval.isFinite, pingInterval == 0 || (0.1...86_400).contains(pingInterval) else {
            throw ConfigurationError(option: "--ping-interval", problem: "\(pingInterval) is not 0 or between 0.1 and 86400 seconds")
        }
        c.pingInterval = pingInterval
        do {
            c.basePath = try BasePath(basePath ?? "").prefix
        } catch {
            throw ConfigurationError(option: "--base-path", problem: "\(error)")
        }
        c.maxClients = maxClients
        guard authenticationDeadline.isFinite, (1...3600).contains(authenticationDeadline) else {
            throw ConfigurationError(option: "--authentication-deadline", problem: "\(authenticationDeadline) is not between 1 and 3600 seconds")
        }
        guard maxUnauthenticatedPerSource >= 1 else {
            throw ConfigurationError(option: "--max-unauthenticated-per-source", problem: "the limit per source must be at least 1")
        }
        do {
            c.admission = try Admission.Limits(startRateFull: maxUnauthenticated, perSource: maxUnauthenticatedPerSource,
                                               deadline: .milliseconds(Int64(authenticationDeadline * 1000)))
        } catch {
            throw ConfigurationError(option: "--max-unauthenticated", problem: "\(error)")
        }
        guard (0...600).contains(deferAccept) else {
            throw ConfigurationError(option: "--defer-accept", problem: "\(deferAccept) is not between 0 and 600 seconds")
        }
        c.deferAcceptSeconds = deferAccept
        c.fdStore = fdStore
        if let healthListen {
            guard Listener.parse(healthListen) != nil, !healthListen.hasPrefix("unix:") else {
                throw ConfigurationError(option: "--health-listen", problem: "\"\(healthListen)\" is not HOST:PORT, [IPV6]:PORT or :PORT")
            }
            c.healthListen = healthListen
        }
        for address in trustedProxy {
            guard let canonical = Self.numericAddress(address) else {
                throw ConfigurationError(option: "--trusted-proxy", problem: "\"\(address)\" is not a numeric IPv4 or IPv6 address")
            }
            c.trustedProxies.insert(canonical)
        }
        if let auditLog {
            guard auditLog.hasPrefix("/") else { throw ConfigurationError(option: "--audit-log", problem: "\"\(auditLog)\" is not an absolute path") }
            do {
                c.auditLog = try AuditTrail.open(path: auditLog)
            } catch {
                throw ConfigurationError(option: "--audit-log", problem: "\(error)")
            }
        }
        c.controlSocket = controlSocket
        if let controlGroup {
            guard let group = getgrnam(controlGroup) else {
                throw ConfigurationError(option: "--control-group", problem: "no group \"\(controlGroup)\"")
            }
            guard group.pointee.gr_gid != 0 else {
                throw ConfigurationError(option: "--control-group", problem: "\"\(controlGroup)\" is the root group: name a group for the operators")
            }
            c.controlGroup = group.pointee.gr_gid
        }
        c.mode = policyMode
        guard policyMode != .enforce else {
            throw ConfigurationError(option: "--policy-mode", problem: "roles are always watched: report or learn")
        }
        do {
            c.sessions = try sessions.settings()
            // The roles check what they are given with the same code; a problem is found here first.
            try c.workerSettings.validate()
            try c.vaultSettings.validate()
        } catch {
            throw ConfigurationError(option: error.field, problem: error.problem)
        }
        // What opens a descriptor comes last, so that no check after it can leave one open.
        c.tls = try tls()
        if !reload {
            do {
                c.assets = try assetOptions.sealedFile()
            } catch {
                if let chain = c.tls?.chain { try? chain.close() }
                throw ConfigurationError(option: error.option, problem: error.problem)
            }
            if let (path, terms, retention) = recordingTerms {
                do {
                    c.recording = Server.Recording(directory: try RecordingDirectory.open(path: path), path: path, terms: terms, retention: retention)
                } catch {
                    if let chain = c.tls?.chain { try? chain.close() }
                    try? c.assets?.close()
                    throw ConfigurationError(option: "--record", problem: "\(error)")
                }
            }
        }
        return (c, credentialLine)
    }

    /// The TLS pair, checked by the keyholder's own code in a process of its own (so the key
    /// never enters this one), its chain in a sealed memory file for the workers.
    func tls() throws(ConfigurationError) -> Server.TLS? {
        switch (tlsCert, tlsKey) {
        case (nil, nil): return nil
        case (_, nil): throw ConfigurationError(option: "--tls-key", problem: "--tls-cert needs its key")
        case (nil, _): throw ConfigurationError(option: "--tls-cert", problem: "--tls-key needs its certificate")
        case let (cert?, key?):
            guard KeyholderSettings.signaturesPerSecondRange.contains(tlsSignaturesPerSecond) else {
                throw ConfigurationError(option: "--tls-signatures-per-second", problem: "\(tlsSignaturesPerSecond) is not between 1 and 100000")
            }
            var tls = try Self.tls(certificate: cert, key: key)
            tls.signaturesPerSecond = tlsSignaturesPerSecond
            return tls
        }
    }

    static func tls(certificate cert: String, key: String, command: String = "serve") throws(ConfigurationError) -> Server.TLS {
        // Absolute, for the keyholders started later (after an upgrade too).
        func absolute(_ path: String, _ option: String) throws(ConfigurationError) -> String {
            guard let resolved = realpath(path, nil) else {
                throw ConfigurationError(option: option, problem: "\(path): \(String(cString: strerror(errno)))", command: command)
            }
            defer { free(resolved) }
            return String(cString: resolved)
        }
        let (certFile, keyFile) = (try absolute(cert, "--tls-cert"), try absolute(key, "--tls-key"))
        let kind: TLSKeyKind
        do {
            kind = try KeyholderCheck.run(key: keyFile, certificate: certFile)
        } catch {
            throw ConfigurationError(option: "--tls-key", problem: "\(error)", command: command)
        }
        let chain: FileDescriptor
        do {
            let fd = try FileDescriptor.open(certFile, .readOnly, options: .closeOnExec)
            defer { try? fd.close() }
            let bytes = try fd.readToEnd(limit: 256 * 1024)
            var failed: UnsafePointer<CChar>?
            let sealed = bytes.withUnsafeBytes { cloister_sealed_memfd("cloister-tls-chain", $0.baseAddress, $0.count, &failed) }
            guard sealed >= 0 else {
                throw SystemCallError(call: failed.map { String(cString: $0) } ?? "memfd_create", errno: Errno(rawValue: errno))
            }
            chain = FileDescriptor(rawValue: sealed)
        } catch {
            throw ConfigurationError(option: "--tls-cert", problem: "\(certFile): \(error)", command: command)
        }
        return Server.TLS(certificateFile: certFile, keyFile: keyFile, kind: kind, chain: chain)
    }

    static func randomPassword() -> String {
        let alphabet = Array("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")
        // SystemRandomNumberGenerator is getrandom(2); randomElement is unbiased.
        var generator = SystemRandomNumberGenerator()
        return String((0..<20).map { _ in alphabet.randomElement(using: &generator)! })
    }

    func run() async throws {
        RoleLog.bootstrap()
        let log = RoleLog.logger(.supervisor)
        let configuration: Server.Configuration
        let credentialLine: String?
        let handover: Handover
        do {
            // First, so that the inherited descriptors are close-on-exec before any role starts.
            do {
                handover = try Handover.inherited()
            } catch {
                throw ConfigurationError(option: "LISTEN_FDS", problem: "\(error)")
            }
            var (parsed, line) = try self.configuration(activated: !handover.listeners.isEmpty)
            parsed.build = Version.description
            // After an upgrade the one-time credential is the one the clients already have.
            if let credential = handover.credential, parsed.credential != nil {
                parsed.credential = credential
                line = nil
            }
            (configuration, credentialLine) = (parsed, line)
            do {
                try ControlDirectory.prepare(forSocket: configuration.controlSocket!)
            } catch {
                throw ConfigurationError(option: "--control-socket", problem: "\(error)")
            }
        } catch {
            printToStandardError("\(error)\n")
            throw ExitCode(2)
        }
        let server: Server
        do {
            server = try Server(configuration: configuration, handover: handover, logger: log)
        } catch {
            let option: String
            switch error {
            case .listen: option = "--listen"
            case .controlSocket: option = "--control-socket"
            }
            printToStandardError("\(ConfigurationError(option: option, problem: "\(error)"))\n")
            throw ExitCode(2)
        }
        if let from = handover.upgradedFrom {
            log.notice("upgraded", metadata: ["from": "\(from)", "to": "\(configuration.build)", "sessions": "\(handover.sessions.count)",
                                              "shells_taken_over": "\(handover.orphans.count)"])
        } else if !handover.sessions.isEmpty {
            log.notice("sessions handed over by systemd's fd store", metadata: ["sessions": "\(handover.sessions.count)"])
        }
        for problem in handover.ignored { log.warning("handed over in part: closed", metadata: ["problem": "\(problem)"]) }
        // On reload everything is checked as at start (the profiles too); a one-time
        // credential stays what it was, a given one is read again.
        let oneTime = credential == nil && credentialFile == nil
        let options = self
        await SupervisorRole.run(server, credentialLine: credentialLine, drainTimeout: .milliseconds(Int64(drainTimeout * 1000)),
                                 logger: log) {
            let fresh = try options.configuration(activated: true, reload: true).0
            return (oneTime ? configuration.authentication : fresh.authentication, fresh.tls)
        }
    }

    /// `address` as the kernel's peer names are written (getnameinfo, NI_NUMERICHOST), so that
    /// "::ffff:10.0.0.1" and "0:0::1" compare as they are reported; nil if it is not numeric.
    static func numericAddress(_ address: String) -> String? {
        var v4 = in_addr(), v6 = in6_addr()
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        if inet_pton(AF_INET, address, &v4) == 1, inet_ntop(AF_INET, &v4, &text, socklen_t(text.count)) != nil {
            return String(cString: text)
        }
        if inet_pton(AF_INET6, address, &v6) == 1, inet_ntop(AF_INET6, &v6, &text, socklen_t(text.count)) != nil {
            return String(cString: text)
        }
        return nil
    }
}
extension RolePool.Isolation: ExpressibleByArgument {}

/// `cloister role keyholder-check` in a process of its own: the key's type, or what is wrong
/// with the pair, naming the file.
enum KeyholderCheck {
    struct Failed: Error, CustomStringConvertible { var description: String }

    static func run(key: String, certificate: String) throws -> TLSKeyKind {
        let pipe = try FileDescriptor.pipe(options: .closeOnExec)
        let child = try ChildProcess.spawn(ChildProcess.currentExecutable, arguments: ["role", "keyholder-check", "--key", key, "--cert", certificate],
                                           output: pipe.writeEnd)
        try? pipe.writeEnd.close()
        let printed = String(decoding: (try? pipe.readEnd.readToEnd(limit: 4096)) ?? [], as: UTF8.self)
        let output = String(String(printed.reversed().drop(while: \.isWhitespace)).reversed())
        try? pipe.readEnd.close()
        // On SIGHUP the supervisor's reaper (waitpid(-1)) may take the child first: then its
        // output alone says how it went, a key type being printed only on success.
        let termination = try? child.wait()
        guard termination == nil || termination == .exited(0), let kind = TLSKeyKind(name: output) else {
            throw Failed(description: output.isEmpty ? "the check ended \(termination.map { "\($0)" } ?? "unknown")" : output)
        }
        return kind
    }
}
