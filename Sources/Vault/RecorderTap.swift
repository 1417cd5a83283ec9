import CShim
import NIOCore
import RoleProtocol
import SystemCalls

#if canImport(Glibc)
import Glibc
#endif

/// The vault's side of `--record`: what each session shows its clients (output, resizes,
/// the end; typed input with `--record-input`, never while the terminal does not echo) goes
/// to the recorder as it happens, on a socket the vault never waits on. An event that does
/// not fit is dropped and counted, and the recorder is told how much with the next one that
/// fits: the shell never waits for a recording. With `--record-failure end`, a session that
/// would lose part of its recording is ended instead, its clients told why.
///
/// Everything here belongs to the vault's event loop.
final class RecorderTap: @unchecked Sendable {
    let terms: SessionSettings.Recording
    private var socket: CInt = -1
    /// The recorder's end closed under a send: it died.
    private var feedLost = false
    /// Per session that lost events: how many, and how many output bytes among them.
    private var dropped: [String: (events: UInt32, bytes: UInt64)] = [:]
    /// Sessions the recorder was told of on this feed: any other is announced (as resumed,
    /// from where its output stands) before its next event.
    private var announced: Set<String> = []
    /// A session's first loss of an episode, for the audit trail: (session, why).
    var lost: ((String, String) -> Void)?
    /// `--record-failure end`: the session is to end.
    var failed: ((String) -> Void)?
    /// The send buffer asked for: room for bursts while the recorder writes.
    static let sendBuffer: CInt = 4 << 20

    init(terms: SessionSettings.Recording) { self.terms = terms }

    /// A feed to a (new) recorder: the one before is closed; every running session is
    /// announced on it, as resumed, with where its output stands.
    func link(_ fd: CInt, build: String, sessions: [Session]) {
        // A feed replaced (the recorder was restarted) may have lost what its socket held.
        let replacing = socket >= 0 || feedLost
        if socket >= 0 { close(socket) }
        (socket, feedLost, announced) = (fd, false, [])
        var size = Self.sendBuffer
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<CInt>.size))
        _ = send(.hello(intent: Link.vaultRecorder.intent, build: build))
        for session in sessions.sorted(by: { $0.created < $1.created }) where !session.isFinished {
            if replacing && terms.endOnFailure {
                lost?(session.id, "the recorder was restarted")
                failed?(session.id)
            } else {
                started(session, resumed: true)
            }
        }
    }

    /// A new session is recorded from its first byte (with what the ring already holds:
    /// the notice), a resumed one from where its output stands.
    func started(_ session: Session, resumed: Bool) {
        emit(announcement(session, from: resumed ? session.ring.end : 0, resumed: resumed), session)
        if !resumed { output(session, from: 0) }
    }

    private func announcement(_ session: Session, from offset: UInt64, resumed: Bool) -> RecorderFeed {
        .started(stamp(session), user: session.user, columns: session.size.columns, rows: session.size.rows, offset: offset, resumed: resumed)
    }

    /// Output from `offset`, sent from the ring's own memory (no copy in this process).
    func output(_ session: Session, from offset: UInt64) {
        var at = offset
        while at < session.ring.end, let sent = session.ring.withRegions(from: at, limit: RecorderFeed.maxOutput, { from, first, second in
            let count = first.count + second.count
            emit(.output(stamp(session), offset: from, bytes: []), session, bytes: UInt64(count), regions: (first, second))
            return from + UInt64(count)
        }) {
            at = sent
        }
    }

    /// Typed input, with `--record-input` only, and never while the terminal reads lines
    /// without echoing them (ECHO off, ICANON on): how getpass(3), sudo, ssh and `read -s`
    /// read a password. A program that takes keys one at a time and draws them itself (a
    /// shell's line editor, an editor: ICANON off) has its keys recorded.
    func input(_ session: Session, _ bytes: ByteBuffer, terminal: CInt) {
        guard terms.recordInput, bytes.readableBytes > 0 else { return }
        var modes = termios()
        guard tcgetattr(terminal, &modes) == 0, modes.c_lflag & tcflag_t(ECHO) != 0 || modes.c_lflag & tcflag_t(ICANON) == 0 else { return }
        var rest = bytes
        while rest.readableBytes > 0, let piece = rest.readBytes(length: min(rest.readableBytes, RecorderFeed.maxOutput)) {
            emit(.input(stamp(session), bytes: piece), session)
        }
    }

    func resized(_ session: Session) {
        emit(.resize(stamp(session), columns: session.size.columns, rows: session.size.rows), session)
    }

    func ended(_ session: Session) {
        emit(.ended(stamp(session), exit: session.exitStatus.map { "\($0)" } ?? "ended, status unknown"), session)
        dropped[session.id] = nil
        announced.remove(session.id)
    }

    private func stamp(_ session: Session) -> RecorderFeed.Session {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return RecorderFeed.Session(id: session.id, time: UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec / 1000))
    }

    /// Sends `event` after announcing the session if this feed has not, and after telling of
    /// what it lost, if it did; drops it otherwise.
    /// `regions`: an output event's bytes, where they lie (`event` then carries none).
    private func emit(_ event: RecorderFeed, _ session: Session, bytes: UInt64 = 0,
                      regions: (UnsafeRawBufferPointer, UnsafeRawBufferPointer)? = nil) {
        if case .started = event {
        } else if !announced.contains(session.id) {
            // Its announcement was dropped: made now, from where this event begins.
            var offset = session.ring.end
            if case .output(_, let from, _) = event { offset = from }
            guard send(announcement(session, from: offset, resumed: true)) else { return drop(session, bytes: bytes) }
            announced.insert(session.id)
        }
        if let loss = dropped[session.id] {
            guard send(.gap(stamp(session), events: loss.events, bytes: loss.bytes)) else { return drop(session, bytes: bytes) }
            dropped[session.id] = nil
        }
        guard send(event, regions: regions) else { return drop(session, bytes: bytes) }
        if case .started = event { announced.insert(session.id) }
    }

    /// An event not sent: counted; the first of an episode audited (and, with
    /// `--record-failure end`, the session ended).
    private func drop(_ session: Session, bytes: UInt64) {
        if let loss = dropped[session.id] {
            dropped[session.id] = (loss.events &+ 1, loss.bytes &+ bytes)
            return
        }
        dropped[session.id] = (1, bytes)
        lost?(session.id, socket < 0 ? "no recorder is linked" : "the recorder is not keeping up")
        if terms.endOnFailure { failed?(session.id) }
    }

    /// One packet, without waiting; false if it was not sent. `regions` follow the event's
    /// own bytes in the packet (an output event's output, where it lies in the ring). A
    /// recorder that is gone closes the feed: everything is a gap until the next.
    private func send(_ event: RecorderFeed, regions: (UnsafeRawBufferPointer, UnsafeRawBufferPointer)? = nil) -> Bool {
        guard socket >= 0 else { return false }
        let sent = event.encoded.withUnsafeBytes { head in
            var iov = [head, regions?.0, regions?.1].compactMap { $0 }.filter { $0.count > 0 }
                .map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
            return iov.withUnsafeMutableBufferPointer { iov in
                Result { () throws(SystemCallError) in
                    _ = try DescriptorPassing.send(socket, UnsafeBufferPointer(iov), descriptors: UnsafeBufferPointer(start: nil, count: 0), nonBlocking: true)
                }
            }
        }
        guard case .failure(let error) = sent else { return true }
        if ![EAGAIN, EWOULDBLOCK, ENOBUFS, EINTR].contains(error.errno.rawValue) {
            close(socket)
            (socket, feedLost) = (-1, true)
        }
        return false
    }
}
