import Circuits
import FoundationEssentials
import Logging
import NIOCore
import NIOPosix
import Processes
import RoleProtocol
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The PTY vault: decides who may have a shell, owns every PTY master and session, and
/// relays between each session and the workers serving its clients. It runs sandboxed (no
/// exec, no files); shells come from the nursery, which hands back the master of each new
/// terminal.
///
/// An attachment is one client's use of one session: the worker opens a circuit and presents
/// the client's credential, window size and, to join a session, its id and a secret. The
/// vault checks them (constant time, wrong ones throttled), starts a session (a shell on a new
/// PTY from the nursery) or finds the one asked for, and relays until the shell exits (the
/// attachment ends with its status) or the client leaves. A session outlives its clients: with
/// none attached it lingers for `SessionSettings.linger`, then is hung up (the master is
/// closed, so the shell's session gets SIGHUP).
///
/// Sessions, terminals and worker links all live on one event loop, which reads and writes
/// every terminal and every worker link: a keystroke crosses the vault on the thread that
/// read it. Only what waits (a throttled refusal, a password's hash, the nursery) leaves it.
public final class Vault: Sendable {
    /// Workers and users whose accepted credential is already audited.
    private let credentialsAudited = Mutex<Set<String>>([])

    private struct Configuration {
        var credential: Credential?
        /// Instead of `credential`: web users checked by their passwords' hashes.
        var users: PasswordCheck?
        var nursery: RoleTransport?
        /// Keeps each session's terminal and ring for the vault after this one.
        var supervisor: RoleTransport?
    }

    /// Attached clients, counted from admission (before a new session's shell starts).
    private struct Counts {
        var attachments = 0
        var started: UInt64 = 0
    }

    private let configuration = Mutex(Configuration())
    private let counts = Mutex(Counts())
    private let throttle = FailureThrottle(interval: .milliseconds(100))
    private let logger: Logger
    private let title: String
    private let settings: SessionSettings
    /// The loop every session, terminal and worker link belongs to.
    let loop: EventLoop
    private let sessions = Sessions()
    /// With `--record`: the feed to the recorder; on `loop`.
    private let tap: RecorderTap?

    /// The sessions, by id and by shell; on `loop`.
    private final class Sessions: @unchecked Sendable {
        var byID: [String: Session] = [:]
        var byShell: [Int32: Session] = [:]
        /// Exits the nursery reported before the vault had made the session around the shell.
        var earlyExits: [Int32: Exit] = [:]
        /// Made on first use, on the loop.
        var poller: TerminalPoller?
    }

    public init(logger: Logger, title: String = "cloister", settings: SessionSettings = .init(),
                on loop: EventLoop = MultiThreadedEventLoopGroup.singleton.next()) {
        self.logger = logger
        self.title = title
        self.settings = settings
        self.loop = loop
        tap = settings.recording.map(RecorderTap.init(terms:))
        tap?.lost = { [unowned self] session, why in
            audit(.recordingGap, [("session", session), ("reason", why), ("ends_session", "\(settings.recording?.endOnFailure == true)")])
        }
        tap?.failed = { [sessions] id in sessions.byID[id]?.endForRecording() }
    }

    /// Serves the supervisor's conversations (configuration and links) until its transport
    /// closes; worker links are served on the vault's loop for as long as they last.
    public func serve(supervisor: RoleTransport) async {
        configuration.withLock { $0.supervisor = supervisor }
        await withDiscardingTaskGroup { group in
            while let circuit = try? await supervisor.accept() {
                group.addTask { await self.fromSupervisor(circuit) }
            }
            group.cancelAll()
        }
        configuration.withLock { $0.nursery?.close() }
    }

    /// One supervisor conversation, ended once acted on.
    private func fromSupervisor(_ circuit: RoleCircuit) async {
        guard let received = await circuit.firstMessage(SupervisorToVault.self, logger: logger) else { return }
        switch received.message {
        case .configure(let token):
            configuration.withLock {
                $0.credential = token.map(Credential.init(token:))
                $0.users = nil
            }
        case .configureUsers(let users):
            configuration.withLock {
                $0.users = PasswordCheck(users: users)
                $0.credential = nil
            }
            logger.info("web users configured", metadata: ["users": "\(users.hashes.count)"])
        case .nurseryLink:
            // The decoder checked that the link came with its descriptor.
            do {
                let nursery = try await Link.vaultNursery.start(socket: received.descriptors!.take(0)!, side: .opener)
                let previous = configuration.withLock { s in
                    defer { s.nursery = nursery }
                    return s.nursery
                }
                previous?.close()
                Task { await self.receiveExits(from: nursery) }
                logger.info("nursery linked")
            } catch {
                logger.error("nursery link failed", metadata: ["error": "\(error)"])
            }
        case .recorderFeed:
            let feed = received.descriptors!.take(0)!
            guard let tap else {
                try? feed.close()
                logger.error("a recorder feed came, but this vault does not record")
                break
            }
            try? await loop.submit { [sessions] in tap.link(feed.rawValue, build: BuildID.current, sessions: Array(sessions.byID.values)) }.get()
            logger.info("recorder linked")
        case .listSessions:
            let summaries = (try? await loop.submit { [sessions] in
                sessions.byID.values.sorted { $0.created < $1.created }.map { $0.summary() }
            }.get()) ?? []
            var page = 0
            repeat {
                let slice = Array(summaries.dropFirst(page * VaultToSupervisor.pageSize).prefix(VaultToSupervisor.pageSize))
                guard (try? await circuit.send(VaultToSupervisor.sessions(slice))) != nil else { break }
                page += 1
            } while page * VaultToSupervisor.pageSize < summaries.count
        case .kick(let id, let client):
            let found = (try? await loop.submit { [sessions] in sessions.byID[id]?.kick(client.map(Int.init)) ?? false }.get()) ?? false
            logger.info("kick", metadata: ["session": "\(id)", "client": "\(client.map { "\($0)" } ?? "all")", "found": "\(found)"])
            try? await circuit.send(VaultToSupervisor.done(found: found), end: true)
            return
        case .attachmentCount:
            let (current, started) = counts.withLock { (UInt32($0.attachments), $0.started) }
            try? await circuit.send(VaultToSupervisor.attachments(current: current, started: started), end: true)
            return
        case .hangUp(let id):
            let found = (try? await loop.submit { [sessions] () -> Bool in
                guard let session = sessions.byID[id] else { return false }
                session.hangUp("the operator's hang-up")
                return true
            }.get()) ?? false
            logger.info("hang-up", metadata: ["session": "\(id)", "found": "\(found)"])
            try? await circuit.send(VaultToSupervisor.done(found: found), end: true)
            return
        case .adopt(let id, let shell):
            // The decoder checked that both descriptors came with it.
            let adopted = await adopt(id: id, shell: shell, master: received.descriptors!.take(0)!, ring: received.descriptors!.take(1)!)
            try? await circuit.send(VaultToSupervisor.done(found: adopted), end: true)
            return
        case .workerLink(let worker):
            // Answered first: the supervisor hands the worker its end only then, and the
            // handshake needs both.
            try? await circuit.send([], end: true)
            var log = logger
            log[metadataKey: "worker"] = "\(worker)"
            do {
                // Conversations are served from the first: the worker may open one as soon as
                // the handshakes have crossed.
                let link = try await Link.workerVault.start(socket: received.descriptors!.take(0)!, side: .acceptor, on: loop) {
                    [self, log] circuit in conversation(circuit, worker: worker, logger: log)
                }.get()
                try await loop.submit { [log] in
                    link.onClose = { reason in log.info("worker link closed", metadata: ["reason": "\(reason)"]) }
                }.get()
                log.info("worker linked")
            } catch {
                log.error("worker link failed", metadata: ["error": "\(error)"])
            }
            return
        }
        try? await circuit.send([], end: true)
    }

    // MARK: Worker conversations

    /// A conversation a worker opened: its first message says what it is (a check or an
    /// attach). What follows waits, within the circuit's credit, until that is answered.
    private func conversation(_ circuit: RoleChannelCircuit, worker: UInt32, logger: Logger) {
        circuit.onMessage = { [self] payload, isEnd in
            circuit.isDeliveryPaused = true
            circuit.onMessage = nil
            // Ended before asking anything.
            if payload.readableBytes == 0 && isEnd { return circuit.end() }
            first(Array(buffer: payload), on: circuit, worker: worker, logger: logger)
        }
    }

    private func first(_ payload: [UInt8], on circuit: RoleChannelCircuit, worker: UInt32, logger: Logger) {
        switch try? WorkerToVault(decoding: payload, descriptors: 0) {
        case .check(let token):
            Task {
                let user = await authorizedUser(token)
                auditCredential(token, user: user, worker: worker)
                answer(circuit, user != nil ? .accepted(title: title) : .refused(.badCredential))
            }
        case .attach(let request):
            Task { await attach(request, on: circuit, worker: worker, logger: logger) }
        case .input, .resize, .pause, .resume, nil:
            logger.error("an attachment began without attach or check", metadata: ["first_kind": "\(payload.first ?? 0)"])
            answer(circuit, .refused(.malformedRequest))
        }
    }

    /// The vault's last word on a conversation that goes no further; whatever the worker still
    /// sends on it is dropped.
    private func answer(_ circuit: RoleChannelCircuit, _ message: VaultToWorker) {
        loop.execute {
            circuit.onMessage = { _, _ in }
            circuit.isDeliveryPaused = false
            _ = try? circuit.send(message.encoded, end: true)
        }
    }

    private func attach(_ request: AttachRequest, on circuit: RoleChannelCircuit, worker: UInt32, logger: Logger) async {
        // Where a trusted proxy said the client is: in every fact of this attachment.
        let forwarded = request.forwardedFor.map { [("forwarded_for", String(decoding: $0, as: UTF8.self))] } ?? []
        guard let webUser = await authorizedUser(request.token) else {
            logger.warning("attachment refused: bad credential")
            auditCredential(request.token, user: nil, worker: worker, forwarded)
            return answer(circuit, .refused(.badCredential))
        }
        auditCredential(request.token, user: webUser, worker: worker, forwarded)
        // Arguments only where the operator allowed them, and only for a new session: a
        // worker that sends them otherwise is not following the protocol.
        guard request.arguments.isEmpty || (settings.urlArguments && request.session == nil) else {
            logger.error("attachment refused: command arguments that are not allowed")
            return answer(circuit, .refused(.malformedRequest))
        }
        // Admitted before any shell starts, so a refused client costs none.
        let maximum = settings.maxAttachments
        let admitted = counts.withLock { c in
            guard maximum == 0 || c.attachments < maximum else { return false }
            c.attachments += 1
            c.started += 1
            return true
        }
        guard admitted else {
            logger.warning("attachment refused: as many clients as allowed are attached", metadata: ["max": "\(maximum)"])
            return answer(circuit, .refused(.busy))
        }
        let release: @Sendable () -> Void = { [self] in counts.withLock { $0.attachments -= 1 } }
        let session: Session, writer: Bool
        let user = auditedUser(request.token, user: webUser)
        if let wanted = request.session {
            // In a fleet, an id begins with its host's id: one of another host's sessions came
            // here because that host could not be reached (the balancer sent it on). The
            // prefix is in the URL already, so saying so reveals nothing.
            if !settings.hostID.isEmpty, !wanted.id.starts(with: Array((settings.hostID + ".").utf8)) {
                release()
                logger.warning("attachment refused: the session belongs to another host")
                return answer(circuit, .refused(.otherHost))
            }
            guard let (found, mayWrite) = await join(wanted) else {
                release()
                logger.warning("attachment refused: no session with that id and secret")
                audit(.credentialRefused, [("method", "session secret"), ("user", auditedUser(request.token, user: webUser)),
                                           ("session", String(decoding: wanted.id.prefix(LinkLimits.sessionField), as: UTF8.self)),
                                           ("worker", "\(worker)")] + forwarded)
                return answer(circuit, .refused(.badCredential))
            }
            (session, writer) = (found, mayWrite && !request.readonly)
        } else {
            do {
                session = try await startSession(columns: request.columns, rows: request.rows, arguments: request.arguments,
                                                 user: webUser.isEmpty ? nil : Array(webUser.utf8), audited: user, logger: logger)
                audit(.sessionStarted, [("session", session.id), ("user", user), ("shell_pid", "\(session.shell)"),
                                        ("arguments", "\(request.arguments.count)"), ("worker", "\(worker)")] + forwarded)
            } catch {
                release()
                logger.error("no shell for an attachment", metadata: ["error": "\(error)"])
                return answer(circuit, .refused(.noTerminal))
            }
            writer = !request.readonly
        }
        let mayWrite = writer && !settings.readOnly
        loop.execute { [self] in
            let start = session.attach(from: request.offset)
            let stream = mayWrite ? request.inputStream.flatMap { $0.isEmpty ? nil : session.inputSlot(for: $0) } : nil
            let how = request.session == nil ? "new session" : request.readonly ? "read-only link or request" : "session secret"
            audit(.attached, [("session", session.id), ("client", "\(start.client)"), ("mode", mayWrite ? "writer" : "viewer"),
                              ("joined_by", how), ("user", user), ("worker", "\(worker)")] + forwarded)
            let attachment = Attachment(number: start.client, circuit: circuit, session: session, writer: mayWrite, worker: worker,
                                        cursor: start.offset, inputStream: stream, logger: logger) { [self] ending in
                release()
                audit(.detached, [("session", session.id), ("client", "\(start.client)"), ("ending", ending), ("worker", "\(worker)")] + forwarded)
            }
            let open = counts.withLock { $0.attachments }
            attachment.start(session.info(title: title, writer: mayWrite, offset: start.offset, skipped: start.skipped, inputStream: stream),
                             openAttachments: open)
        }
    }

    // MARK: Credentials

    /// Checks a presented credential, with the web user it names: the proxy's header's name,
    /// or the users file's user; "" when there is one credential or none. A wrong one is
    /// answered no sooner than its turn in `throttle`: guesses, from all workers together,
    /// get at most ten answers a second, so even a worker an attacker controls cannot search
    /// the password space quickly. A right one is answered at once; an empty one (nothing
    /// presented yet, as a browser's first request) is no guess and not delayed.
    // MARK: Audit

    /// A fact for the audit trail, sent to the supervisor on a conversation of its own;
    /// nothing waits for it.
    func audit(_ kind: AuditRecord.Kind, _ fields: [(String, String)]) {
        guard let supervisor = configuration.withLock({ $0.supervisor }) else { return }
        let record = AuditRecord(kind, fields)
        Task { try? await supervisor.open().tell(VaultToSupervisor.audit(record)) }
    }

    /// How a credential is checked here.
    private var authenticationMethod: String {
        if settings.authHeader { return "proxy header" }
        return configuration.withLock { $0.users != nil ? "users file" : $0.credential != nil ? "basic" : "none" }
    }

    /// The user a token names: the one accepted, else the name before the password in what
    /// was presented (so that a refused login says whom it tried), else nothing.
    private func auditedUser(_ token: [UInt8], user: String?) -> String {
        if let user, !user.isEmpty { return user }
        if settings.authHeader { return Self.isUserName(token) ? String(decoding: token, as: UTF8.self) : "" }
        guard let decoded = Data(base64Encoded: Data(token.prefix(LinkLimits.token))), let colon = decoded.firstIndex(of: UInt8(ascii: ":")) else {
            return ""
        }
        return String(decoding: decoded[..<colon].prefix(64), as: UTF8.self)
    }

    /// A credential checked for `worker`'s client. An accepted one is audited once per worker
    /// and user (a page load checks it for every file it fetches); every refusal is (the
    /// supervisor writes a burst as counts).
    private func auditCredential(_ token: [UInt8], user: String?, worker: UInt32, _ extra: [(String, String)] = []) {
        let name = auditedUser(token, user: user)
        if user != nil {
            let first = credentialsAudited.withLock { seen in
                if seen.count >= 4096 { seen.removeAll() }
                return seen.insert("\(worker)\u{0}\(name)").inserted
            }
            guard first else { return }
        }
        audit(user != nil ? .credentialAccepted : .credentialRefused,
              [("method", authenticationMethod), ("user", name), ("worker", "\(worker)")] + extra)
    }

    private func authorizedUser(_ token: [UInt8]) async -> String? {
        // The proxy in front authenticated the user and named them; no credential exists.
        if settings.authHeader { return Self.isUserName(token) ? String(decoding: token, as: UTF8.self) : nil }
        let (credential, users) = configuration.withLock { ($0.credential, $0.users) }
        if let users {
            if let user = users.remembered(token) { return user }
            // A hash takes tens of milliseconds: off the event loops.
            if let user = try? await onOwnThread({ users.user(for: token) }) { return user }
        } else {
            guard let credential else { return "" }
            if credential.matches(token) { return "" }
        }
        if !token.isEmpty { await throttle.wait() }
        return nil
    }

    /// A name a proxy's header may give: 1 to `LinkLimits.userName` bytes of UTF-8 without
    /// control characters (it goes into the shell's environment).
    static func isUserName(_ bytes: [UInt8]) -> Bool {
        guard (1...LinkLimits.userName).contains(bytes.count), let text = String(validating: bytes, as: UTF8.self) else { return false }
        return text.unicodeScalars.allSatisfy { $0.value >= 0x20 && $0.value != 0x7f }
    }

    /// The session `wanted` names, if the secret is one of its two: whether it lets the
    /// client write. A wrong id or secret is answered like a wrong credential, throttled with
    /// them, and says nothing about whether the id exists.
    private func join(_ wanted: (id: [UInt8], secret: [UInt8])) async -> (Session, writer: Bool)? {
        let found = try? await loop.submit { [sessions] () -> (Session, Bool)? in
            let session = sessions.byID[String(decoding: wanted.id, as: UTF8.self)]
            // Both secrets are compared whatever the first gives, and an unknown id is compared
            // with secrets of the same length, so timing tells nothing either.
            let (write, read) = session.map { ($0.writeSecret, $0.readSecret) } ?? (Self.unknownSecret, Self.unknownSecret)
            let writes = Credential(token: Array(write.utf8)).matches(wanted.secret) && session != nil
            let watches = Credential(token: Array(read.utf8)).matches(wanted.secret) && session != nil
            guard let session, !session.isFinished, writes || watches else { return nil }
            return (session, writes)
        }.get()
        guard let found else {
            await throttle.wait()
            return nil
        }
        return found
    }

    private static let unknownSecret = SessionToken.random(bytes: 18)

    // MARK: Shells

    /// A shell on a new PTY, and the memory file for its session's ring, both made by the
    /// nursery: the vault never creates or sizes a file itself.
    private func spawnShell(columns: UInt16, rows: UInt16, arguments: [[UInt8]], user: [UInt8]?) async throws
        -> (pid: Int32, master: SystemPackage.FileDescriptor, state: SystemPackage.FileDescriptor) {
        guard let nursery = configuration.withLock({ $0.nursery }) else { throw VaultError.noNursery }
        let conversation = try nursery.open()
        let stateBytes = UInt32(KeptRing.fileSize(capacity: settings.ringBytes))
        try await conversation.send(VaultToNursery.spawn(columns: columns, rows: rows, arguments: arguments, user: user,
                                                         stateBytes: stateBytes), end: true)
        let reply = try await conversation.receive(NurseryToVault.self)
        switch reply?.message {
        case .spawned(let pid, withState: true):
            // The decoder checked that both descriptors came with it.
            return (pid, reply!.descriptors!.take(0)!, reply!.descriptors!.take(1)!)
        case .spawned(let pid, withState: false):
            // A nursery that made no ring file: the shell is started, and must not be left.
            signalShell(pid)(SIGHUP) {}
            throw VaultError.nursery("the nursery started shell \(pid) without the session's state file")
        case .failed(let reason):
            throw VaultError.nursery(reason)
        case .exited, nil:
            throw VaultError.nursery("no shell and no reason")
        }
    }

    /// Starts a shell and the session around it; the session runs on the loop until the
    /// shell exits or the session is hung up. It is kept by the supervisor before anyone
    /// learns of it, so a vault that dies from then on leaves it to the next.
    /// `user`: the web user whose account the shell may run as; `audited`: the name the audit
    /// trail and the recording give (with one credential, the name presented with it).
    private func startSession(columns: UInt16, rows: UInt16, arguments: [[UInt8]], user: [UInt8]?, audited: String,
                              logger: Logger) async throws -> Session {
        let shell = try await spawnShell(columns: columns, rows: rows, arguments: arguments, user: user)
        let session: Session
        do {
            session = try await loop.submit { [self] in
                let session = try Session(shell: shell.pid, state: shell.state, settings: settings, on: loop, logger: logger, ended: forget,
                                          signal: signalShell(shell.pid), release: releaseKept)
                session.user = audited
                session.sized(columns: columns, rows: rows)
                // Before the shell's first byte: every client, and the recording, begin with it.
                if let notice = settings.recording?.notice, !notice.isEmpty {
                    session.ring.append(Array("\u{1b}[1m\(notice)\u{1b}[0m\r\n".utf8))
                }
                return session
            }.get()
            try await keep(session, master: shell.master)
        } catch {
            try? shell.master.close()
            throw error
        }
        try await loop.submit { [self] in try run(session, master: shell.master, resumed: false) }.get()
        logger.info("session started", metadata: ["session": "\(session.id)", "shell": "\(shell.pid)", "columns": "\(columns)",
                                                  "rows": "\(rows)"])
        return session
    }

    private var forget: (Session) -> Void {
        { [sessions, self] in
            sessions.byID[$0.id] = nil
            sessions.byShell[$0.shell] = nil
            audit(.sessionEnded, [("session", $0.id), ("shell_pid", "\($0.shell)"), ("exit", $0.exitStatus.map { "\($0)" } ?? "unknown"),
                                  ("duration_seconds", "\(max(0, Int64(time(nil)) - Int64($0.created)))"), ("bytes_out", "\($0.bytesOut)")])
        }
    }

    private func signalShell(_ pid: Int32) -> (Int32, @escaping @Sendable () -> Void) -> Void {
        { [self] signal, sent in
            Task {
                await self.signal(pid, signal)
                sent()
            }
        }
    }

    /// Hands the supervisor a copy of the session's terminal and ring.
    private func keep(_ session: Session, master: SystemPackage.FileDescriptor) async throws {
        guard let supervisor = configuration.withLock({ $0.supervisor }) else { return }
        try await supervisor.open().tell(VaultToSupervisor.keep(session: session.id, shell: session.shell),
                                         descriptors: [master, session.ring.descriptor])
    }

    private var releaseKept: (Session, @escaping @Sendable () -> Void) -> Void {
        { [self] session, done in
            Task { [id = session.id] in
                if let supervisor = configuration.withLock({ $0.supervisor }) {
                    try? await supervisor.open().tell(VaultToSupervisor.release(session: id))
                }
                done()
            }
        }
    }

    /// Makes the terminal poller (and its thread) now rather than with the first session:
    /// a sandboxed vault makes every thread before its filter is loaded.
    public func startPoller() async throws {
        try await loop.submit { [sessions, loop] in
            if sessions.poller == nil { sessions.poller = try TerminalPoller(loop: loop) }
        }.get()
    }

    /// Reads the session's terminal from now on; on the loop. Takes ownership of `master`.
    /// `resumed`: adopted from a vault before this one (its recording goes on).
    private func run(_ session: Session, master: SystemPackage.FileDescriptor, resumed: Bool) throws {
        let poller: TerminalPoller
        if let existing = sessions.poller {
            poller = existing
        } else {
            poller = try TerminalPoller(loop: loop)
            sessions.poller = poller
        }
        let terminal = try Terminal.open(master: master, poller: poller, readable: { session.terminalReadable() },
                                         closed: { session.terminalDidClose() })
        sessions.byID[session.id] = session
        sessions.byShell[session.shell] = session
        if let tap {
            session.tap = tap
            tap.started(session, resumed: resumed)
        }
        session.started(on: terminal)
        if let exit = sessions.earlyExits.removeValue(forKey: session.shell) { session.shellExited(exit) }
    }

    /// Takes over a session a vault before this one kept: its ring must be in this build's
    /// format and name the session and shell the supervisor kept it under.
    private func adopt(id: String, shell: Int32, master: SystemPackage.FileDescriptor, ring descriptor: SystemPackage.FileDescriptor) async -> Bool {
        let ring: KeptRing
        do {
            ring = try KeptRing.adopt(descriptor)
        } catch {
            try? master.close()
            logger.error("session not adopted", metadata: ["session": "\(id)", "shell": "\(shell)", "error": "\(error)"])
            return false
        }
        guard ring.identity.id == id, ring.identity.shell == shell else {
            try? master.close()
            logger.error("session not adopted: its ring names another session",
                         metadata: ["session": "\(id)", "shell": "\(shell)", "ring_session": "\(ring.identity.id)",
                                    "ring_shell": "\(ring.identity.shell)"])
            return false
        }
        do {
            try await loop.submit { [self] in
                let session = Session(ring: ring, settings: settings, on: loop, logger: logger, ended: forget, signal: signalShell(shell),
                                      release: releaseKept)
                try run(session, master: master, resumed: true)
                logger.info("session adopted", metadata: ["session": "\(id)", "shell": "\(shell)", "offset": "\(ring.end)",
                                                          "adoptions": "\(ring.adoptions)"])
            }.get()
            return true
        } catch {
            logger.error("session not adopted", metadata: ["session": "\(id)", "shell": "\(shell)", "error": "\(error)"])
            return false
        }
    }

    /// The nursery's reports of reaped shells, each on a conversation of its own.
    private func receiveExits(from nursery: RoleTransport) async {
        while let conversation = try? await nursery.accept() {
            guard case .exited(let pid, let exit)? = try? await conversation.receive(NurseryToVault.self)?.message else { continue }
            loop.execute { [sessions] in
                if let session = sessions.byShell[pid] {
                    session.shellExited(exit)
                } else {
                    // Bounded: a report for a shell the vault never made a session for is forgotten.
                    if sessions.earlyExits.count >= 1024 { sessions.earlyExits.removeAll() }
                    sessions.earlyExits[pid] = exit
                }
            }
        }
    }

    /// Has the nursery send `signal` to the process group of the shell `pid` (ttyd's --signal).
    private func signal(_ pid: Int32, _ signal: Int32) async {
        guard let nursery = configuration.withLock({ $0.nursery }), let conversation = try? nursery.open() else { return }
        try? await conversation.tell(VaultToNursery.signal(pid: pid, signal: signal))
    }
}

public enum VaultError: Error, CustomStringConvertible {
    case noNursery
    case nursery(String)
    public var description: String {
        switch self {
        case .noNursery: return "no nursery is linked"
        case .nursery(let reason): return "the nursery refused: \(reason)"
        }
    }
}
