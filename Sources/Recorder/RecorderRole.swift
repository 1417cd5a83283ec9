import CShim
import Circuits
import Logging
import RoleProtocol
import Sandbox
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The recorder process, sandboxed under its own profile: it opens nothing (every file it
/// writes is one the supervisor opened inside the recording directory and handed to it), and
/// it reads nothing but the vault's feed, in the fixed layout of `RecorderFeed`: no client
/// byte reaches it except as the output a session showed.
public enum RecorderRole {
    /// Before its threads exist, the process takes SCHED_BATCH, which every thread it makes
    /// inherits: a recorder woken by a keystroke's output never preempts the worker or the
    /// vault still serving that keystroke, and keeps its fair share of the CPU under load.
    public static func confine(_ sandbox: RoleSandbox, settings: RecorderSettings) throws -> (ConfinedRole, batch: SystemCallError?) {
        let batch = cloister_sched_batch() == 0 ? nil : SystemCallError(call: "sched_setscheduler(SCHED_BATCH)", errno: Errno(rawValue: errno))
        return (try sandbox.confine(role: RoleDeclaration.recorder.role.rawValue, openFileLimit: settings.openFiles,
                                    fileSizeLimit: settings.maxRecordingBytes), batch)
    }

    /// Threads made before the filter: the event loop (Swift concurrency), the supervisor
    /// link's reader and writer; the reserve reads the feeds.
    /// `batch`: why SCHED_BATCH was refused, if it was (logged once the log is up).
    public static func run(settings: RecorderSettings, confined: ConfinedRole, batch: SystemCallError? = nil) async throws {
        RoleLog.bootstrap()
        let log = RoleLog.logger(.recorder)
        let supervisor = try await Link.supervisorRecorder.start(socket: Link.inheritedTransport, side: .acceptor)
        let steps = try confined.seal(threads: RoleDeclaration.recorder.threads, reserve: RoleDeclaration.recorder.reserve)
        log.info("sandbox entered", metadata: ["steps": "\(steps.joined(separator: "; "))"])
        let recorder = Recorder(settings: settings, logger: log, open: { session, done in
            Task {
                do {
                    let circuit = try supervisor.open()
                    try await circuit.send(RecorderToSupervisor.open(session: session), end: true)
                    let reply = try await circuit.receive(SupervisorToRecorder.self)
                    switch reply?.message {
                    case .file(let existing)?:
                        done(.success((reply!.descriptors!.take(0)!.rawValue, existing)))
                    case .refused(let reason)?: done(.failure(.init(reason: reason)))
                    default: done(.failure(.init(reason: "the supervisor answered something else")))
                    }
                } catch {
                    done(.failure(.init(reason: "\(error)")))
                }
            }
        }, audit: { record in
            Task { try? await supervisor.open().tell(RecorderToSupervisor.audit(record)) }
        }, finished: { session in
            Task { try? await supervisor.open().tell(RecorderToSupervisor.finished(session: session)) }
        })
        if let batch { log.warning("running at the normal scheduling policy", metadata: ["error": "\(batch)"]) }
        try await ControlCircuit.serve(supervisor) { group in
            while let circuit = try? await supervisor.accept() {
                group.addTask {
                    guard let received = await circuit.firstMessage(SupervisorToRecorder.self, logger: log) else { return }
                    switch received.message {
                    case .directory(let last, let link):
                        recorder.directory(last: Int(last), link: link)
                        log.info("recording directory", metadata: ["last_sequence": "\(last)"])
                    case .feed:
                        let feed = received.descriptors!.take(0)!
                        do {
                            _ = try Threads.start("feed", detached: true) { read(feed, into: recorder, log: log) }
                        } catch {
                            try? feed.close()
                            log.error("no thread for a vault's feed", metadata: ["error": "\(error)"])
                        }
                    case .finish(let reason):
                        recorder.finishAll(reason)
                        log.info("recordings ended", metadata: ["reason": "\(reason)"])
                    case .file, .refused:
                        log.error("the supervisor sent an answer nobody asked for")
                    }
                    try? await circuit.send([], end: true)
                }
            }
        }
        // The supervisor is gone without a `.finish` (it was killed): what is open ends here.
        recorder.finishAll("the recorder's supervisor went away")
    }

    /// Reads one vault's feed until it closes (the vault ended or was replaced). A packet
    /// that is not a `RecorderFeed` event ends the feed: the vault is not following the
    /// protocol, and its recordings go on with the next vault.
    static func read(_ feed: FileDescriptor, into recorder: Recorder, log: Logger) {
        defer { try? feed.close() }
        var greeted = false
        var buffer = [UInt8](repeating: 0, count: RecorderFeed.maxPacket + 1)
        while true {
            // One packet a read (a seqpacket socket); one longer than any event is cut to
            // maxPacket + 1 bytes, which no event decodes from.
            let count: Int
            do {
                count = try valueOrErrno("read") { Glibc.read(feed.rawValue, &buffer, buffer.count) }
            } catch {
                log.error("the feed failed", metadata: ["error": "\(error)"])
                return
            }
            guard count > 0 else {
                log.info("feed closed")
                return
            }
            let event: RecorderFeed
            do {
                event = try RecorderFeed(decoding: Array(buffer[..<count]), descriptors: 0)
            } catch {
                log.error("the feed sent what is not an event; it is closed", metadata: ["error": "\(error)", "bytes": "\(count)"])
                return
            }
            if case .hello(let intent, let build) = event {
                guard !greeted, intent == Link.vaultRecorder.intent, build == BuildID.current else {
                    log.error("the feed's hello is not a vault of this build; it is closed", metadata: ["intent": "\(intent)", "build": "\(build)"])
                    return
                }
                greeted = true
                log.info("vault feed linked")
                continue
            }
            guard greeted else {
                log.error("the feed did not begin with hello; it is closed")
                return
            }
            recorder.handle(event)
        }
    }
}
