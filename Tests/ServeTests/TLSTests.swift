import Foundation
import Processes
import SystemPackage
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// `serve --tls-cert --tls-key` against real TLS clients (openssl s_client, curl) and the live
/// processes: what the handshakes accept and refuse, where the key is in memory and where it
/// is not, and what a bad pair does at start and on reload.
final class TLSTests: XCTestCase {
    /// A self-signed pair the test makes with openssl: "rsa" (2048 bits), "ec" (P-256), or
    /// anything `openssl req -newkey` takes.
    struct Pair {
        var directory: String
        var certificate: String { directory + "/cert.pem" }
        var key: String { directory + "/key.pem" }
    }

    static func run(_ executable: String, _ arguments: [String], input: String? = nil) throws -> (ChildProcess.Termination, String) {
        let pipe = try makePipe()
        let child = try ChildProcess.spawn(executable, arguments: arguments, output: pipe.write)
        try pipe.write.close()
        let output = String(decoding: try readAll(pipe.read), as: UTF8.self)
        try pipe.read.close()
        return (try child.wait(), output)
    }

    static func makePair(_ newkey: String, in parent: String, name: String = "pair") throws -> Pair {
        let pair = Pair(directory: parent + "/" + name)
        try FileManager.default.createDirectory(atPath: pair.directory, withIntermediateDirectories: true)
        let (ended, output) = try run("/usr/bin/openssl", ["req", "-x509", "-newkey", newkey, "-nodes", "-keyout", pair.key, "-out", pair.certificate,
                                                            "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"])
        XCTAssertEqual(ended, .exited(0), output)
        chmod(pair.key, 0o600)
        return pair
    }

    func temporaryDirectory() throws -> String {
        let directory = NSTemporaryDirectory() + "cloister-tls-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        addTeardownBlock { try? FileManager.default.removeItem(atPath: directory) }
        return directory
    }

    /// openssl s_client with `options`, its output.
    static func handshake(_ port: UInt16, _ options: [String]) throws -> String {
        try run("/bin/sh", ["-c", "echo | exec /usr/bin/openssl s_client -connect 127.0.0.1:\(port) -servername localhost " + options.joined(separator: " ") + " 2>&1"]).1
    }

    /// The key's secret number, as `openssl pkey -text` prints it (EC: priv; RSA: prime1).
    static func secret(of pair: Pair) throws -> [UInt8] {
        let text = try run("/usr/bin/openssl", ["pkey", "-in", pair.key, "-text", "-noout"]).1
        let lines = text.split(separator: "\n").map(String.init)
        guard let start = lines.firstIndex(where: { $0.hasPrefix("priv:") || $0.hasPrefix("prime1:") }) else { return [] }
        var hex = ""
        for line in lines[(start + 1)...] {
            guard line.hasPrefix(" ") else { break }
            hex += line.filter { $0.isHexDigit }
        }
        var bytes = stride(from: 0, to: hex.count, by: 2).map { i -> UInt8 in
            let from = hex.index(hex.startIndex, offsetBy: i)
            return UInt8(hex[from..<hex.index(from, offsetBy: 2)], radix: 16)!
        }
        // openssl prints a leading zero byte when the top bit is set.
        while bytes.first == 0 { bytes.removeFirst() }
        return bytes
    }

    /// Whether `needle` (or its byte reversal: OpenSSL's numbers are little-endian words in
    /// memory) is anywhere in the readable memory of `pid`, read through /proc/PID/mem.
    static func memory(of pid: pid_t, contains needle: [UInt8]) throws -> Bool {
        let maps = try String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8)
        let mem = open("/proc/\(pid)/mem", O_RDONLY)
        guard mem >= 0 else { throw ServedCloister.Failure(description: "open /proc/\(pid)/mem: errno \(errno)") }
        defer { close(mem) }
        let reversed = Array(needle.reversed())
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, fields[1].hasPrefix("r"), !line.hasSuffix("[vvar]"), !line.hasSuffix("[vsyscall]") else { continue }
            let bounds = fields[0].split(separator: "-").compactMap { UInt64($0, radix: 16) }
            guard bounds.count == 2 else { continue }
            var region = [UInt8](repeating: 0, count: Int(bounds[1] - bounds[0]))
            let got = region.withUnsafeMutableBytes { pread(mem, $0.baseAddress, $0.count, off_t(Int64(bitPattern: bounds[0]))) }
            guard got > 0 else { continue }
            let data = Data(region.prefix(got))
            if data.range(of: Data(needle)) != nil || data.range(of: Data(reversed)) != nil { return true }
        }
        return false
    }

    func pids(of role: String, in server: ServedCloister) throws -> [pid_t] {
        let text = try Self.run("/usr/bin/pgrep", ["-f", "-P", "\(server.child.pid)", "role \(role) "]).1
        return text.split(separator: "\n").compactMap { pid_t($0) }
    }

    /// RSA and ECDSA: TLS 1.2 and 1.3 handshakes succeed (HTTP/1.1 by ALPN, a page over
    /// HTTPS), TLS 1.1 and an ALPN without HTTP/1.1 are refused, `ctl workers` counts the
    /// signatures; then, as root, the key's secret number is found in the keyholder's memory
    /// and in no worker's, and no worker's command line, environment or descriptors name
    /// the key file.
    func testHandshakesAndTheKeyStaysInTheKeyholder() throws {
        let directory = try temporaryDirectory()
        for newkey in ["rsa:2048", "ec:/dev/stdin"] {
            let pair: Pair
            if newkey.hasPrefix("ec") {
                let params = directory + "/p256.pem"
                XCTAssertEqual(try Self.run("/usr/bin/openssl", ["ecparam", "-name", "prime256v1", "-out", params]).0, .exited(0))
                pair = try Self.makePair("ec:" + params, in: directory, name: "ec")
            } else {
                pair = try Self.makePair(newkey, in: directory, name: "rsa")
            }
            let server = try ServedCloister.start(workers: 2, extra: ["--tls-cert", pair.certificate, "--tls-key", pair.key])
            for version in ["-tls1_2", "-tls1_3"] {
                let out = try Self.handshake(server.port, [version, "-alpn", "http/1.1"])
                XCTAssertTrue(out.contains("ALPN protocol: http/1.1"), "\(newkey) \(version): \(out)")
                XCTAssertTrue(out.contains(version == "-tls1_2" ? "TLSv1.2" : "TLSv1.3"), "\(newkey) \(version): \(out)")
            }
            let old = try Self.handshake(server.port, ["-tls1_1"])
            XCTAssertTrue(old.contains("alert protocol version") || old.contains("no protocols available"), old)
            XCTAssertTrue(try Self.handshake(server.port, ["-alpn", "h2"]).contains("alert no application protocol"))
            let page = try Self.run("/usr/bin/curl", ["-sS", "--cacert", pair.certificate, "-u", ServedCloister.userAndPassword,
                                                      "-o", "/dev/null", "-w", "%{http_code} %{ssl_verify_result}", "https://127.0.0.1:\(server.port)/"]).1
            XCTAssertEqual(page, "200 0", "the page over HTTPS, the chain verified")
            let workerReports = try server.workers()
            let signed = workerReports.compactMap { $0["signatures"] as? Int }.reduce(0, +)
            XCTAssertGreaterThanOrEqual(signed, 3, "\(workerReports)")

            if geteuid() == 0 {
                let secret = try Self.secret(of: pair)
                XCTAssertGreaterThanOrEqual(secret.count, 32, "\(newkey): the secret was not read")
                let keyholders = try pids(of: "keyholder", in: server)
                XCTAssertEqual(keyholders.count, 1)
                for pid in keyholders {
                    XCTAssertTrue(try Self.memory(of: pid, contains: secret), "\(newkey): the scan does not find the key where it is")
                }
                let workers = try pids(of: "worker", in: server)
                XCTAssertEqual(workers.count, 2)
                for pid in workers {
                    XCTAssertFalse(try Self.memory(of: pid, contains: secret), "\(newkey): the key is in worker \(pid)'s memory")
                    let cmdline = try String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)
                    let environ = (try? String(contentsOfFile: "/proc/\(pid)/environ", encoding: .utf8)) ?? ""
                    XCTAssertFalse(cmdline.contains(pair.key) || environ.contains(pair.key), "worker \(pid) is told where the key is")
                    for fd in try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd") {
                        let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")) ?? ""
                        XCTAssertFalse(target.contains("key.pem"), "worker \(pid) holds the key file: fd \(fd)")
                    }
                }
            }
            // One TLS library in the product: no process of it maps OpenSSL's libssl (the
            // keyholder's libcrypto is the only OpenSSL it links).
            let roles = try ["worker", "vault", "keyholder"].flatMap { try pids(of: $0, in: server) } + [server.child.pid]
            XCTAssertEqual(roles.count, 5)
            for pid in roles {
                let maps = try String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8)
                XCTAssertFalse(maps.contains("libssl"), "pid \(pid) maps libssl")
            }
            XCTAssertFalse(server.output.contains("sandbox violation"), server.output)
            XCTAssertEqual(try server.stop(), .exited(0))
        }
    }

    /// A pair that cannot serve is a start-up error naming the file, and nothing starts.
    func testABadPairIsAStartUpErrorNamingTheFile() throws {
        let directory = try temporaryDirectory()
        let rsa = try Self.makePair("rsa:2048", in: directory, name: "rsa")
        let other = try Self.makePair("rsa:2048", in: directory, name: "other")
        let small = try Self.makePair("rsa:1024", in: directory, name: "small")
        let edwards = try Self.makePair("ed25519", in: directory, name: "ed25519")
        let readable = try Self.makePair("rsa:2048", in: directory, name: "readable")
        chmod(readable.key, 0o640)
        let cases: [(cert: String, key: String, expect: String)] = [
            (rsa.certificate, other.key, "\(other.key): does not match the certificate in \(rsa.certificate)"),
            (small.certificate, small.key, "\(small.key): an RSA key of 1024 bits; at least 2048 are needed"),
            (edwards.certificate, edwards.key, "\(edwards.key): a ED25519 key; RSA (2048 bits or more), ECDSA P-256 and P-384 are supported"),
            (readable.certificate, readable.key, "\(readable.key): mode 640 lets others than its owner read or write it"),
            (rsa.key, rsa.key, "\(rsa.key): no PEM certificate could be read"),
            (rsa.certificate, directory + "/missing.pem", "missing.pem: No such file or directory"),
        ]
        for (cert, key, expect) in cases {
            let (ended, output) = try Self.run(cloisterExecutable, ["serve", "--listen", "127.0.0.1:0", "--control-socket", directory + "/c.sock",
                                                                    "--policy-dir", packageRoot + "/policies", "--tls-cert", cert, "--tls-key", key])
            XCTAssertEqual(ended, .exited(2), output)
            XCTAssertTrue(output.contains(expect), "expected \(expect) in: \(output)")
            XCTAssertFalse(output.contains("listening"), output)
        }
        let (ended, output) = try Self.run(cloisterExecutable, ["serve", "--listen", "tls:127.0.0.1:0", "--control-socket", directory + "/c.sock",
                                                                "--policy-dir", packageRoot + "/policies"])
        XCTAssertEqual(ended, .exited(2))
        XCTAssertTrue(output.contains("--listen: \"tls:127.0.0.1:0\" asks for TLS: give --tls-cert and --tls-key"), output)
    }

    /// SIGHUP reads the pair again: a new one is served from then on; a bad one is refused
    /// and the one before stays. Only listeners marked tls: speak TLS.
    func testSIGHUPReloadsThePairAndKeepsTheOldOneWhenTheNewOneIsBad() throws {
        let directory = try temporaryDirectory()
        let first = try Self.makePair("rsa:2048", in: directory, name: "first")
        let second = try Self.makePair("ec:" + (try { () throws -> String in
            let params = directory + "/p256.pem"
            _ = try Self.run("/usr/bin/openssl", ["ecparam", "-name", "prime256v1", "-out", params])
            return params
        }()), in: directory, name: "second")
        let served = try Self.makePair("rsa:2048", in: directory, name: "served")
        func install(_ pair: Pair) throws {
            for (from, to) in [(pair.certificate, served.certificate), (pair.key, served.key)] {
                let bytes = try Data(contentsOf: URL(fileURLWithPath: from))
                try bytes.write(to: URL(fileURLWithPath: to))
            }
            chmod(served.key, 0o600)
        }
        func fingerprint(_ certificate: String) throws -> String {
            try Self.run("/usr/bin/openssl", ["x509", "-in", certificate, "-noout", "-fingerprint", "-sha256"]).1
        }
        func servedFingerprint(_ port: UInt16) throws -> String {
            let out = try Self.handshake(port, [])
            let file = directory + "/seen.pem"
            guard let begin = out.range(of: "-----BEGIN CERTIFICATE-----"), let end = out.range(of: "-----END CERTIFICATE-----") else { return "" }
            try String(out[begin.lowerBound..<end.upperBound]).write(toFile: file, atomically: true, encoding: .utf8)
            return try fingerprint(file)
        }
        try install(first)
        let server = try ServedCloister.start(workers: 1, extra: ["--tls-cert", served.certificate, "--tls-key", served.key])
        XCTAssertEqual(try servedFingerprint(server.port), try fingerprint(first.certificate))
        try install(second)
        try server.child.signal(SIGHUP)
        XCTAssertTrue(eventually(20) { (try? servedFingerprint(server.port)) == (try? fingerprint(second.certificate)) },
                      "the new pair is not served: \(server.output)")
        // A certificate without its key: refused, the second pair stays.
        try Data(contentsOf: URL(fileURLWithPath: first.certificate)).write(to: URL(fileURLWithPath: served.certificate))
        try server.child.signal(SIGHUP)
        XCTAssertTrue(eventually(10) { server.output.contains("reload refused; nothing changed") }, server.output)
        XCTAssertTrue(server.output.contains("does not match the certificate"), server.output)
        XCTAssertEqual(try servedFingerprint(server.port), try fingerprint(second.certificate))
        XCTAssertFalse(server.output.contains("sandbox violation"), server.output)
        XCTAssertEqual(try server.stop(), .exited(0))
    }

    /// Listeners marked tls: speak TLS; the others plain HTTP.
    func testOnlyMarkedListenersSpeakTLS() throws {
        let directory = try temporaryDirectory()
        let pair = try Self.makePair("rsa:2048", in: directory)
        let server = try ServedCloister.start(workers: 1, extra: ["--listen", "tls:127.0.0.1:0", "--tls-cert", pair.certificate, "--tls-key", pair.key])
        let lines = server.output.split(separator: "\n").filter { $0.contains("cloister: listening on ") }
        XCTAssertEqual(lines.filter { $0.contains("https://") }.count, 1, "\(lines)")
        XCTAssertEqual(lines.filter { $0.contains("http://") }.count, 1, "\(lines)")
        let plain = try Self.run("/usr/bin/curl", ["-sS", "-u", ServedCloister.userAndPassword, "-o", "/dev/null", "-w", "%{http_code}",
                                                   "http://127.0.0.1:\(server.port)/"]).1
        XCTAssertEqual(plain, "200")
        guard let https = lines.first(where: { $0.contains("https://") }),
              let portText = https.split(separator: ":").last?.prefix(while: { $0.isNumber }), let port = UInt16(portText) else {
            return XCTFail("\(lines)")
        }
        XCTAssertTrue(try Self.handshake(port, ["-alpn", "http/1.1"]).contains("ALPN protocol: http/1.1"))
        XCTAssertEqual(try server.stop(), .exited(0))
    }
}
