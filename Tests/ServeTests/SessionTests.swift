import Foundation
import Processes
import Synchronization
import TerminalClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Sessions against the real server: shared between clients, read-only viewers, resumed
/// after a close or a killed worker with nothing lost or doubled, lingering and hung up.
final class SessionTests: XCTestCase {
    static let token = TerminalClient.token(ServedCloister.userAndPassword)

    private func join(_ server: ServedCloister, session: String? = nil, secret: String? = nil, offset: UInt64? = nil,
                      readonly: Bool = false) throws -> TerminalClient {
        let client = try TerminalClient.connect(port: server.port)
        try client.authenticate(token: Self.token, session: session, secret: secret, offset: offset, readonly: readonly)
        return client
    }

    func testWritersShareASessionAndAViewerCannotType() throws {
        let server = try ServedCloister.start(workers: 2)
        let a = try join(server)
        let info = try a.awaitSession()
        XCTAssertNotNil(info.secret, "the writer is told the writing secret")
        XCTAssertNotEqual(info.secret, info.read_secret)
        let b = try join(server, session: info.session, secret: info.secret)
        XCTAssertEqual(try b.awaitSession().secret, info.secret)
        let viewer = try join(server, session: info.session, secret: info.read_secret)
        XCTAssertNil(try viewer.awaitSession().secret, "a viewer is never told the writing secret")
        let watching = try join(server, session: info.session, secret: info.secret, readonly: true)
        XCTAssertNil(try watching.awaitSession().secret, "read-only even with the writing secret")

        try a.input("echo from-a-$((1+1))\r")
        for client in [a, b, viewer, watching] { try client.readOutput { $0.contains("from-a-2") } }
        try b.input("echo from-b-$((2+2))\r")
        for client in [a, b, viewer, watching] { try client.readOutput { $0.contains("from-b-4") } }
        // What the viewers type goes nowhere; a writer's next line proves the shell saw none.
        try viewer.input("echo from-viewer-$((3+3))\r")
        try watching.input("echo from-watching-$((4+4))\r")
        try a.input("echo after-$((5+5))\r")
        let seen = try b.readOutput { $0.contains("after-10") }
        XCTAssertFalse(seen.contains("from-viewer") || seen.contains("from-watching"), seen)
        XCTAssertTrue(server.output.contains("mode=viewer"), server.output)
    }

    func testAWrongIdOrSecretIsRefusedLikeAWrongCredential() throws {
        let server = try ServedCloister.start(workers: 1)
        let a = try join(server)
        let info = try a.awaitSession()
        for (session, secret) in [(info.session, "wrong-secret"), ("no-such-session", info.secret!), (info.session, "")] {
            let client = try join(server, session: session, secret: secret)
            guard let closed = try? client.awaitClose() else { return XCTFail(server.output) }
            XCTAssertEqual(closed.code, 1008, "\(session) \(secret)")
            XCTAssertEqual(closed.reason, "authentication failed")
        }
        // A session without a secret is no request at all.
        let bare = try TerminalClient.connect(port: server.port)
        try bare.sendFrame(opcode: 0x1, payload: Array(#"{"AuthToken":"\#(Self.token)","session":"\#(info.session)"}"#.utf8))
        XCTAssertEqual(try bare.awaitClose().code, 1008)
        try a.input("echo still-$((1+2))\r")
        try a.readOutput { $0.contains("still-3") }
    }

    /// A shell printing numbered lines; the client leaves (cleanly, or with its worker
    /// killed) in the middle and resumes at its offset: every line arrives once, in order.
    private func resumeKeepsEveryLine(killingTheWorker: Bool) throws {
        let server = try ServedCloister.start(workers: 2)
        let first = try join(server)
        let info = try first.awaitSession()
        let lines = 30_000
        // Pauses spread the stream over about a second, so the client leaves in the middle.
        try first.input("i=0; while [ $i -lt \(lines) ]; do echo line-$i; i=$((i+1)); [ $((i % 3000)) = 0 ] && sleep 0.1; done; echo end-$((40+2))\r")
        var bytes = try first.readOutput(untilMarker: "line-3000\r\n")
        if killingTheWorker {
            let pids = try server.workers().compactMap { ($0["pid"] as? Int).map(pid_t.init) }
            let busy = try server.workers().first { ($0["connections"] as? Int ?? 0) > 0 }?["pid"] as? Int
            XCTAssertEqual(pids.count, 2)
            XCTAssertEqual(kill(pid_t(try XCTUnwrap(busy)), SIGKILL), 0)
            XCTAssertThrowsError(try first.readOutput { $0.contains("never") }, "the connection dies with its worker")
        } else {
            try first.closeNormally()
        }
        bytes += first.takeOutput()
        let offset = try XCTUnwrap(first.resumeOffset)
        XCTAssertEqual(offset, UInt64(bytes.count), "a new session's stream starts at 0")
        do {
            let second = try join(server, session: info.session, secret: info.secret, offset: offset)
            let resumed = try second.awaitSession()
            XCTAssertEqual(resumed.offset, offset)
            XCTAssertEqual(resumed.skipped, 0)
            // On a loaded machine the first client may have read to the end before it left.
            if !String(decoding: bytes, as: UTF8.self).contains("end-42") {
                bytes += try second.readOutput(untilMarker: "end-42")
            }
        } catch {
            return XCTFail("\(error)\n\(server.output)")
        }
        let text = String(decoding: bytes, as: UTF8.self)
        let numbers = text.split(separator: "\r\n").compactMap { line -> Int? in
            guard line.hasPrefix("line-") else { return nil }
            return Int(line.dropFirst(5))
        }
        XCTAssertEqual(numbers, Array(0..<lines), "every line once, in order")
    }

    func testResumeAfterACloseLosesAndDoublesNothing() throws {
        try resumeKeepsEveryLine(killingTheWorker: false)
    }

    func testResumeAfterTheWorkerIsKilledLosesAndDoublesNothing() throws {
        try resumeKeepsEveryLine(killingTheWorker: true)
    }

    func testAnOffsetTheRingNoLongerHoldsResumesAtTheOldestByteWithTheCountSkipped() throws {
        let server = try ServedCloister.start(workers: 1, extra: ["--session-ring", "131072"])
        let a = try join(server)
        let info = try a.awaitSession()
        try a.input("head -c 400000 /dev/zero | tr '\\\\0' x; echo; echo done-$((3+4))\r")
        _ = try a.readOutput(untilMarker: "done-7")
        // The prompt follows: once nothing more comes, A has everything the ring has.
        _ = try a.drainOutput(forSeconds: 1)
        let b = try join(server, session: info.session, secret: info.read_secret, offset: 0)
        let resumed = try b.awaitSession()
        XCTAssertGreaterThan(resumed.skipped, 0)
        XCTAssertEqual(resumed.offset, resumed.skipped, "it starts where the ring does")
        XCTAssertEqual(a.resumeOffset! - resumed.offset, 131_072, "the ring holds its size, the newest bytes")
    }

    func testASessionNobodyReturnsToIsHungUpAfterTheLinger() throws {
        let server = try ServedCloister.start(workers: 1, extra: ["--session-linger", "1"])
        var client: TerminalClient? = try join(server)
        let info = try client!.awaitSession()
        try client!.input("echo pid=$$.\r")
        let text = try client!.readOutput { $0.range(of: #"pid=\d+\."#, options: .regularExpression) != nil }
        let match = text.range(of: #"pid=\d+\."#, options: .regularExpression)!
        let shell = Int32(text[match].dropFirst(4).dropLast())!
        client = nil
        // Within the linger the session can be joined again; leaving again restarts it.
        let back = try join(server, session: info.session, secret: info.secret)
        try back.awaitSession()
        try back.input("echo back-$((1+1))\r")
        try back.readOutput { $0.contains("back-2") }
        try back.closeNormally()
        XCTAssertEqual(kill(shell, 0), 0, "alive while it lingers")
        XCTAssertTrue(eventually(15) { kill(shell, 0) != 0 && errno == ESRCH }, "hung up after the linger")
        XCTAssertTrue(eventually(10) { server.output.contains("exit=signal \(SIGHUP) pid=") && server.output.contains("shell=\(shell)") },
                      server.output)
        let late = try join(server, session: info.session, secret: info.secret)
        XCTAssertEqual(try late.awaitClose().code, 1008, "a session that ended cannot be joined")
    }

    /// Clients that type and go at once, before their session is even up: what they typed
    /// reaches the shell (which has the linger to run it), and the session without a client
    /// is hung up after the linger like any other. The client's end could come before its
    /// attachment had started, and such a session was left with a shell and nobody to hang
    /// it up.
    func testAClientThatLeavesAtOnceStillReachesItsShellAndItsSessionEnds() throws {
        let server = try ServedCloister.start(workers: 1, extra: ["--session-linger", "2"])
        let markers = FileManager.default.temporaryDirectory.appendingPathComponent("cloister-typed-\(getpid())").path
        try FileManager.default.createDirectory(atPath: markers, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: markers) }
        for i in 0..<20 {
            let client = try TerminalClient.connect(port: server.port)
            try client.authenticate(token: Self.token)
            try client.input(": > \(markers)/\(i)\r")
            // Gone without reading a byte: the socket closes when the client goes.
        }
        XCTAssertTrue(eventually(20) { (try? FileManager.default.contentsOfDirectory(atPath: markers).count) == 20 },
                      "what each client typed ran: \((try? FileManager.default.contentsOfDirectory(atPath: markers)) ?? [])")
        XCTAssertTrue(eventually(20) { (try? self.listedSessions(server).count) == 0 },
                      "every session was hung up: \((try? self.listedSessions(server)) ?? [])\n\(server.output.suffix(3000))")
    }

    /// `cloister ctl ARGS --socket …`: exit status and output.
    private func ctl(_ server: ServedCloister, _ arguments: [String]) throws -> (ChildProcess.Termination, String) {
        let pipe = try makePipe()
        let child = try ChildProcess.spawn(cloisterExecutable, arguments: ["ctl"] + arguments + ["--socket", server.controlSocket],
                                           output: pipe.write)
        try pipe.write.close()
        let text = String(decoding: try readAll(pipe.read), as: UTF8.self)
        try pipe.read.close()
        return (try child.wait(), text)
    }

    /// A new session's writer, and a viewer joined to it.
    private func writerAndViewer(_ server: ServedCloister) throws -> (TerminalClient, TerminalClient.SessionMessage, TerminalClient) {
        let writer = try join(server)
        let info = try writer.awaitSession()
        let viewer = try join(server, session: info.session, secret: info.read_secret)
        try viewer.awaitSession()
        return (writer, info, viewer)
    }

    /// `ctl sessions --json`'s sessions.
    private func listedSessions(_ server: ServedCloister) throws -> [[String: Any]] {
        let json = try ctl(server, ["sessions", "--json"]).1
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any], json)
        return try XCTUnwrap(object["sessions"] as? [[String: Any]], json)
    }

    func testTheOperatorListsKicksAndHangsUpSessionsAndNeverSeesASecret() throws {
        let server = try ServedCloister.start(workers: 2)
        let (writer, info, viewer) = try writerAndViewer(server)
        try writer.input("echo listed-$((2+5))\r")
        try viewer.readOutput { $0.contains("listed-7") }

        let (status, json) = try ctl(server, ["sessions", "--json"])
        XCTAssertEqual(status, .exited(0), json)
        XCTAssertFalse(json.contains(info.secret!) || json.contains(info.read_secret), "no secret on the control socket: \(json)")
        let sessions = try listedSessions(server)
        XCTAssertEqual(sessions.count, 1)
        XCTAssertEqual(sessions[0]["id"] as? String, info.session)
        XCTAssertEqual(sessions[0]["command"] as? String, "/bin/sh")
        let clients = try XCTUnwrap(sessions[0]["clients"] as? [[String: Any]])
        XCTAssertEqual(clients.compactMap { $0["mode"] as? String }.sorted(), ["viewer", "writer"])
        XCTAssertGreaterThan(sessions[0]["bytes_out"] as? Int ?? 0, 0)
        let (_, table) = try ctl(server, ["sessions"])
        XCTAssertTrue(table.hasPrefix("SESSION"), table)
        XCTAssertTrue(table.contains(info.session), table)

        // Kicking the viewer ends its connection; the session and its writer go on.
        let viewerClient = try XCTUnwrap(clients.first { $0["mode"] as? String == "viewer" }?["client"] as? Int)
        XCTAssertEqual(try ctl(server, ["kick", info.session, "\(viewerClient)"]).0, .exited(0))
        let kicked = try viewer.awaitClose()
        XCTAssertEqual(kicked.code, 1000)
        XCTAssertEqual(kicked.reason, "disconnected by the operator")
        try writer.input("echo still-$((3+5))\r")
        try writer.readOutput { $0.contains("still-8") }
        let (missing, refusal) = try ctl(server, ["kick", "no-such-session"])
        XCTAssertNotEqual(missing, .exited(0))
        XCTAssertTrue(refusal.contains("no session no-such-session"), refusal)

        // Hanging up ends the session for its writer with the shell's end.
        XCTAssertEqual(try ctl(server, ["hangup", info.session]).0, .exited(0))
        let ended = try writer.awaitClose()
        XCTAssertEqual(ended.code, 1000)
        XCTAssertTrue(ended.reason.contains("signal \(SIGHUP)"), ended.reason)
        XCTAssertTrue(eventually(10) { (try? self.ctl(server, ["sessions", "--json"]).1.contains("\"sessions\":[]")) ?? false })
    }

    /// The client an operator most needs to kick is one that stopped reading: its output
    /// waits on the worker's credit, and the kick must not wait with it.
    func testTheOperatorKicksAViewerThatStoppedReading() throws {
        let server = try ServedCloister.start(workers: 1)
        let (writer, info, stuck) = try writerAndViewer(server)
        try writer.input("head -c 30000000 /dev/zero | tr '\\0' '\\132'; echo; echo done-$((5+6))\r")
        _ = try writer.readOutput(untilMarker: "done-11")

        func viewers() throws -> [Int] {
            let clients = try XCTUnwrap(try listedSessions(server).first?["clients"] as? [[String: Any]])
            return clients.filter { $0["mode"] as? String == "viewer" }.compactMap { $0["client"] as? Int }
        }
        let viewer = try XCTUnwrap(try viewers().first)
        let (kick, said) = try ctl(server, ["kick", info.session, "\(viewer)"])
        XCTAssertEqual(kick, .exited(0), "ctl kick said: \(said)")
        // Nothing is read from the stuck client before the vault has let it go.
        XCTAssertTrue(eventually(10) { (try? viewers().isEmpty) ?? false }, "the kicked viewer is still attached\n\(server.output.suffix(3000))")
        try writer.input("echo after-$((6+6))\r")
        try writer.readOutput { $0.contains("after-12") }
        // Its connection is then closed, after what it still had to read (with the reason
        // if it reads it soon enough, without if the vault stopped waiting for it).
        _ = try stuck.awaitClose()
    }

    /// A client handed to the one thread that reads it.
    private final class Handed: @unchecked Sendable {
        let client: TerminalClient
        init(_ client: TerminalClient) { self.client = client }
    }

    /// Counts `byte` in everything a client reads until `marker`.
    private static func count(_ byte: UInt8, readingUntil marker: String, _ client: TerminalClient) throws -> Int {
        try client.readOutput(untilMarker: marker).reduce(0) { $0 + ($1 == byte ? 1 : 0) }
    }

    /// A viewer that stops reading while the shell prints 50 MB: the writer and the other
    /// viewer get every byte, and the slow one is re-synchronised (the default policy). The
    /// ring (32 MiB here) is what a reading viewer may fall behind the writer by, scheduling
    /// jitter included, before it too counts as slow: with 16 MiB, the reading viewer (on two
    /// cores shared with the server and the writer's reader) fell that far behind in one run
    /// of three.
    func testASlowViewerIsResynchronisedAndSlowsNobody() throws {
        let server = try ServedCloister.start(workers: 2, extra: ["--session-ring", "33554432"])
        let (writer, info, fast) = try writerAndViewer(server)
        let slow = try join(server, session: info.session, secret: info.read_secret)
        try slow.awaitSession()
        let total = 50_000_000
        // 50 chunks of a megabyte with pauses: a producer the readers here can follow (they
        // parse frames in a debug build), while the viewer that does not read falls further
        // behind than the ring. Z is octal 132: the echoed command line holds no Z.
        try writer.input("for i in $(seq 50); do head -c 1000000 /dev/zero | tr '\\0' '\\132'; sleep 0.05; done; echo; echo done-$((4+5))\r")
        let counts = Mutex<[String]>([])
        let readers = [writer, fast].map(Handed.init).map { handed in
            Thread {
                let outcome: String
                do { outcome = "\(try Self.count(UInt8(ascii: "Z"), readingUntil: "done-9", handed.client))" } catch { outcome = "\(error)" }
                counts.withLock { $0.append(outcome) }
            }
        }
        readers.forEach { $0.start() }
        XCTAssertTrue(eventually(120) { counts.withLock { $0.count } == 2 }, "both fast clients finished")
        XCTAssertEqual(counts.withLock { $0 }, ["\(total)", "\(total)"], "every byte, to the writer and to the viewer that reads")
        // Only now does the slow viewer read: it is told it lagged, and ends with the rest.
        let tail = try slow.readOutput(untilMarker: "done-9")
        let lagged = try XCTUnwrap(slow.session)
        XCTAssertEqual(lagged.lagged, true, "told it lagged")
        XCTAssertGreaterThan(lagged.skipped, 0)
        XCTAssertGreaterThanOrEqual(slow.sessionMessages, 2)
        XCTAssertLessThan(tail.count, total)
        let listing = try ctl(server, ["sessions", "--json"]).1
        XCTAssertFalse(listing.contains("\"slow_consumer_events\":0"), listing)
    }

    func testASlowViewerIsDisconnectedWhenThePolicySaysSo() throws {
        let server = try ServedCloister.start(workers: 1, extra: ["--slow-consumer", "disconnect", "--session-ring", "131072"])
        let (writer, _, slow) = try writerAndViewer(server)
        try writer.input("head -c 20000000 /dev/zero | tr '\\0' '\\132'; echo; echo done-$((4+5))\r")
        let closed: TerminalClient.Closed
        do {
            _ = try writer.readOutput(untilMarker: "done-9")
            closed = try slow.awaitClose()
        } catch {
            return XCTFail("\(error)\n\(server.output.suffix(4000))")
        }
        XCTAssertEqual(closed.code, 1013)
        XCTAssertEqual(closed.reason, "fell behind the session")
    }

    /// A hang-up is not held back by a writer that paused (or by one that stopped reading).
    func testHangUpWhileTheWriterHasPaused() throws {
        let server = try ServedCloister.start(workers: 1)
        let writer = try join(server)
        let info = try writer.awaitSession()
        try writer.input("yes paused-output\r")
        try writer.readOutput { $0.contains("paused-output") }
        try writer.pause()
        XCTAssertEqual(try ctl(server, ["hangup", info.session]).0, .exited(0))
        let closed = try writer.awaitClose()
        XCTAssertEqual(closed.code, 1000)
        XCTAssertTrue(closed.reason.contains("signal"), closed.reason)
    }
}
