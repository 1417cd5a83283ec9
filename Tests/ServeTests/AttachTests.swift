import Foundation
import Processes
import SystemPackage
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `cloister attach` in a real terminal (tmux): typing, the window size and its changes, a
/// resume after the serving worker is killed, the shell's exit status, and the terminal
/// restored afterwards.
final class AttachTests: XCTestCase {
    private let tmux = Tmux()

    private func screen(_ name: String) -> String { tmux.screen(name) }

    private func waitForScreen(_ name: String, _ text: String, seconds: Double = 20) -> Bool {
        tmux.waitForScreen(name, text, seconds: seconds)
    }

    func testAttachInARealTerminal() throws {
        let server = try ServedCloister.start(workers: 2, credentialInFile: true)
        try attachTypeResumeAndExit(server, url: "http://127.0.0.1:\(server.port)/")
    }

    /// The same over TLS: https, the server's certificate checked against --tls-ca and the
    /// address, a resume through a new TLS connection.
    func testAttachOverHTTPSResumes() throws {
        let directory = NSTemporaryDirectory() + "cloister-attach-tls-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pair = try TLSTests.makePair("rsa:2048", in: directory)
        let server = try ServedCloister.start(workers: 2, extra: ["--tls-cert", pair.certificate, "--tls-key", pair.key], credentialInFile: true)
        let url = "https://127.0.0.1:\(server.port)/"
        // Without the CA, the certificate is refused, and nothing is attached.
        let (refused, output) = try TLSTests.run(cloisterExecutable, ["attach", url, "--credential-file", server.directory + "/credential"])
        XCTAssertEqual(refused, .exited(64), output)
        XCTAssertTrue(output.contains("cannot attach to \(url): TLS handshake: the server's certificate is not signed by a trusted certificate authority"), output)
        try attachTypeResumeAndExit(server, url: url, options: "--tls-ca \(pair.certificate)")
        _ = try server.stop()
        // A certificate for another name and address, trusted: refused for 127.0.0.1.
        let (ended, made) = try TLSTests.run("/usr/bin/openssl", [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", directory + "/other-key.pem", "-out", directory + "/other.pem",
            "-days", "2", "-subj", "/CN=elsewhere.example", "-addext", "subjectAltName=DNS:elsewhere.example,IP:127.0.0.2"])
        XCTAssertEqual(ended, .exited(0), made)
        chmod(directory + "/other-key.pem", 0o600)
        let other = try ServedCloister.start(workers: 1, extra: ["--tls-cert", directory + "/other.pem", "--tls-key", directory + "/other-key.pem"],
                                             credentialInFile: true)
        let (wrongName, text) = try TLSTests.run(cloisterExecutable, ["attach", "https://127.0.0.1:\(other.port)/", "--tls-ca", directory + "/other.pem",
                                                                     "--credential-file", other.directory + "/credential"])
        XCTAssertEqual(wrongName, .exited(64), text)
        XCTAssertTrue(text.contains("cannot attach to https://127.0.0.1:\(other.port)/: TLS handshake: the server's certificate does not name 127.0.0.1"), text)
    }

    /// Attaches in tmux to `url`, types, resizes, survives the serving worker's death, exits 3.
    private func attachTypeResumeAndExit(_ server: ServedCloister, url: String, options: String = "") throws {
        try XCTSkipUnless(Tmux.isInstalled, "tmux is not installed (make test installs it)")
        let name = "cloister-attach-\(getpid())"
        let command = "\(cloisterExecutable) attach \(url) \(options) --credential-file \(server.directory)/credential; "
            + "echo attach-exit=$?; stty -a | tr ' ' '\\n' | grep -x -e icanon -e -icanon; sleep 60"
        try tmux.run(["new-session", "-d", "-s", name, "-x", "100", "-y", "30", command])
        defer { _ = try? tmux.run(["kill-server"]) }
        XCTAssertTrue(waitForScreen(name, "attached to session"), screen(name) + server.output)

        try tmux.run(["send-keys", "-t", name, "echo hi-$((2+3)); stty size", "Enter"])
        XCTAssertTrue(waitForScreen(name, "hi-5"), screen(name))
        XCTAssertTrue(waitForScreen(name, "30 100"), "the window size reached the shell: \(screen(name))")
        try tmux.run(["resize-window", "-t", name, "-x", "120", "-y", "40"])
        try tmux.run(["send-keys", "-t", name, "clear; stty size", "Enter"])
        XCTAssertTrue(waitForScreen(name, "40 120"), "SIGWINCH resized the session: \(screen(name))")

        // The worker serving us dies: the client says so, resumes, and the same shell goes on.
        try tmux.run(["send-keys", "-t", name, "clear; echo pid=$$.", "Enter"])
        XCTAssertTrue(eventually(20) { self.screen(name).firstMatch(of: /pid=\d+\./) != nil }, screen(name))
        let shell = try XCTUnwrap(screen(name).firstMatch(of: /pid=(\d+)\./)).output.1
        let busy = try server.workers().compactMap { w -> pid_t? in
            (w["connections"] as? Int ?? 0) > 0 ? (w["pid"] as? Int).map(pid_t.init) : nil
        }
        XCTAssertEqual(busy.count, 1)
        XCTAssertEqual(kill(busy[0], SIGKILL), 0)
        XCTAssertTrue(waitForScreen(name, "connection lost; resuming"), screen(name))
        let again = tmux.typeUntil(name, "clear; echo again-$((3+4)) pid=$$.", shows: /again-7 pid=(\d+)\./)
        XCTAssertEqual(again, shell, "the same shell: \(screen(name))")
        try tmux.run(["send-keys", "-t", name, "exit 3", "Enter"])
        XCTAssertTrue(waitForScreen(name, "attach-exit=3"), screen(name))
        // stty's answer comes a moment after the exit status: wait for either.
        XCTAssertTrue(eventually(20) { self.screen(name).contains("\nicanon") || self.screen(name).contains("\n-icanon") },
                      screen(name))
        let after = screen(name)
        XCTAssertTrue(after.contains("\nicanon"), "the terminal is back in canonical mode: \(after)")
    }
}
