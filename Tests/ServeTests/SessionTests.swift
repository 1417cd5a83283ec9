import Foundation
import Processes
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
        let b = try join(server, session: info.session, secret: info.read_secret, offset: 0)
        let resumed = try b.awaitSession()
        XCTAssertGreaterThan(resumed.skipped, 0)
        XCTAssertEqual(resumed.offset, resumed.skipped, "it starts where the ring does")
        XCTAssertGreaterThanOrEqual(try a.resumeOffset! - resumed.offset, 131_072, "the ring holds at least its size")
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

    func testTheOperatorListsKicksAndHangsUpSessionsAndNeverSeesASecret() throws {
        let server = try ServedCloister.start(workers: 2)
        let writer = try join(server)
        let info = try writer.awaitSession()
        let viewer = try join(server, session: info.session, secret: info.read_secret)
        try viewer.awaitSession()
        try writer.input("echo listed-$((2+5))\r")
        try viewer.readOutput { $0.contains("listed-7") }

        let (status, json) = try ctl(server, ["sessions", "--json"])
        XCTAssertEqual(status, .exited(0), json)
        XCTAssertFalse(json.contains(info.secret!) || json.contains(info.read_secret), "no secret on the control socket: \(json)")
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        let sessions = try XCTUnwrap(object["sessions"] as? [[String: Any]])
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
}
