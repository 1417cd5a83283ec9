import Foundation
import Processes
import SystemPackage
import TerminalClient
import TestSupport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// What an operator installs: `make install-files` into a temporary tree, the systemd units
/// checked by systemd-analyze, and the installed binary serving with the installed profiles,
/// without the Swift toolchain, under the internet-facing unit's system call filter.
final class DeployTests: XCTestCase {
    static let releaseBinary = packageRoot + "/.build/release/cloister"
    static let units = ["cloister.service", "cloister.socket", "cloister-nursery.service", "cloister-nursery.socket",
                        "cloister-metrics.service", "cloister-metrics.timer"]

    override func setUpWithError() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: Self.releaseBinary),
                          "\(Self.releaseBinary) is not built (make test builds it first)")
    }

    /// Runs `executable` and returns how it ended and what it wrote (both streams).
    @discardableResult
    private func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (ChildProcess.Termination, String) {
        let pipe = try makePipe()
        let child = try ChildProcess.spawn(executable, arguments: arguments,
                                           environment: environment ?? ["PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"],
                                           output: pipe.write)
        try pipe.write.close()
        let text = String(decoding: try readAll(pipe.read), as: UTF8.self)
        try pipe.read.close()
        return (try child.wait(), text)
    }

    private func temporaryDirectory() throws -> String {
        let directory = NSTemporaryDirectory() + "cloister-deploy-\(getpid())-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        addTeardownBlock { try? FileManager.default.removeItem(atPath: directory) }
        return directory
    }

    private func install(prefix: String, destdir: String = "") throws {
        let (status, text) = try run("/usr/bin/make", ["-s", "-C", packageRoot, "install-files", "PREFIX=\(prefix)", "DESTDIR=\(destdir)"])
        XCTAssertEqual(status, .exited(0), text)
    }

    /// systemd-analyze verify passes on every unit; security scores each service, and the
    /// internet-facing one is at most 2.0.
    func testUnitsVerifyAndTheInternetFacingUnitScoresAtMostTwo() throws {
        // Installed under a real prefix, so that every path a unit names exists.
        let prefix = try temporaryDirectory() + "/usr"
        try install(prefix: prefix)
        let unitDirectory = prefix + "/lib/systemd/system"
        let paths = Self.units.map { unitDirectory + "/" + $0 }
        let (verified, problems) = try run("/usr/bin/systemd-analyze", ["verify"] + paths)
        XCTAssertEqual(verified, .exited(0), problems)
        XCTAssertEqual(problems, "", "systemd-analyze verify found problems")
        var scores: [String: Double] = [:]
        for unit in Self.units where unit.hasSuffix(".service") {
            let (_, text) = try run("/usr/bin/systemd-analyze", ["security", "--offline=yes", unitDirectory + "/" + unit])
            let marker = "Overall exposure level for \(unit): "
            let line = try XCTUnwrap(text.split(separator: "\n").first { $0.contains(marker) }, text)
            let after = line[line.range(of: marker)!.upperBound...]
            let score = try XCTUnwrap(after.split(separator: " ").first.flatMap { Double($0) }, String(line))
            scores[unit] = score
            print("systemd-analyze security --offline=yes \(unit): \(score)")
        }
        XCTAssertLessThanOrEqual(try XCTUnwrap(scores["cloister.service"]), 2.0)
        XCTAssertLessThanOrEqual(try XCTUnwrap(scores["cloister-metrics.service"]), 2.0)
        // The shells' unit is exposed on purpose (see its comments); it is scored, not bounded.
        XCTAssertNotNil(scores["cloister-nursery.service"])
    }

    /// Every syscall a role's profile allows is allowed by the unit's filter too: the
    /// profiles stack on it, and anything it lacks would cost a role its life.
    func testTheUnitsFilterAllowsWhatTheProfilesAllow() throws {
        let (status, listing) = try run("/usr/bin/python3", [packageRoot + "/Tests/Deploy/unit_syscall_filter.py",
                                                             packageRoot + "/deploy/cloister.service", "--list"])
        XCTAssertEqual(status, .exited(0), listing)
        let unitAllows = Set(listing.split(separator: "\n").map(String.init))
        XCTAssertTrue(unitAllows.contains("setresuid") && unitAllows.contains("seccomp"), listing)
        for role in try declaredRoles() {
            let allowed = try profileNames(role) { $0 == "SCMP_ACT_ALLOW" }
            XCTAssertFalse(allowed.isEmpty)
            XCTAssertEqual(allowed.subtracting(unitAllows), [], "\(role).json allows what cloister.service's SystemCallFilter= does not")
        }
    }

    /// The sandboxed roles, as the release binary declares them (what install installs).
    private func declaredRoles(_ binary: String = DeployTests.releaseBinary) throws -> [String] {
        let (status, files) = try run(binary, ["policy", "roles", "--format", "files"])
        XCTAssertEqual(status, .exited(0), files)
        let roles = files.split(separator: "\n").map { String($0.dropLast(".json".count)) }
        XCTAssertTrue(roles.contains("worker") && roles.contains("vault") && roles.contains("keyholder"), files)
        return roles
    }

    /// Install installs a profile for every declared role, and nothing it does not declare.
    func testEveryDeclaredRoleHasAnInstalledProfile() throws {
        let destdir = try temporaryDirectory() + "/dest"
        try install(prefix: "/usr/local", destdir: destdir)
        let installed = destdir + "/usr/local/share/cloister/policies"
        let roles = try declaredRoles()
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: installed)), Set(roles.map { $0 + ".json" }))
        // And serve from the installed binary accepts that directory for every role, TLS's too.
        let (status, output) = try run(destdir + "/usr/local/bin/cloister", ["policy", "check"] + roles.map { installed + "/\($0).json" })
        XCTAssertEqual(status, .exited(0), output)
    }

    private func profileNames(_ role: String, where action: (String) -> Bool) throws -> Set<String> {
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(packageRoot)/policies/\(role).json"))
        let profile = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        var names: Set<String> = []
        for rule in profile["syscalls"] as? [[String: Any]] ?? [] where action(rule["action"] as? String ?? "") {
            names.formUnion(rule["names"] as? [String] ?? [])
        }
        return names
    }

    /// The toolchain's root, from where this test bundle's own Swift runtime was loaded.
    private func toolchainRoot() throws -> String {
        // Read, not sized: /proc files say they are empty.
        let fd = try FileDescriptor.open("/proc/self/maps", .readOnly, options: .closeOnExec)
        defer { try? fd.close() }
        let maps = String(decoding: try readAll(fd), as: UTF8.self)
        let library = try XCTUnwrap(maps.split(separator: "\n").compactMap { line -> String? in
            guard let slash = line.firstIndex(of: "/") else { return nil }
            let path = String(line[slash...])
            return path.hasSuffix("/libswiftCore.so") ? path : nil
        }.first, "no libswiftCore.so mapped")
        let marker = "/usr/lib/swift/linux/libswiftCore.so"
        XCTAssertTrue(library.hasSuffix(marker), library)
        return String(library.dropLast(marker.count))
    }

    /// The installed binary, with the installed profiles and page, in an environment where
    /// the toolchain's directory is empty and nothing is inherited (env -i), socket-activated
    /// as cloister.socket does it and under cloister.service's system call filter: it serves
    /// a shell, every thread of its workers and vault is confined, and no role is killed.
    func testTheInstalledBinaryServesWithoutTheToolchain() throws {
        try XCTSkipUnless(geteuid() == 0, "hiding the toolchain takes a mount namespace: root")
        let root = try temporaryDirectory()
        let destdir = root + "/dest"
        try install(prefix: "/usr/local", destdir: destdir)
        let installed = destdir + "/usr/local/bin/cloister"
        // Nothing world-writable, the binary executable by all, the rest readable.
        let enumerator = try XCTUnwrap(FileManager.default.enumerator(atPath: destdir))
        for case let relative as String in enumerator {
            var info = stat()
            XCTAssertEqual(lstat(destdir + "/" + relative, &info), 0)
            XCTAssertEqual(info.st_mode & 0o002, 0, "\(relative) is world-writable")
        }
        var info = stat()
        XCTAssertEqual(stat(installed, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o755)
        for file in try declaredRoles(installed).map({ "share/cloister/policies/\($0).json" }) + ["share/cloister/web/index.html",
                     "lib/systemd/system/cloister.service", "share/doc/cloister/README.md", "share/doc/cloister/deploy/nginx-cloister.conf"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: destdir + "/usr/local/" + file), file)
        }
        // Linked against nothing of the toolchain's.
        let (_, dynamic) = try run("/usr/bin/readelf", ["-d", installed])
        XCTAssertFalse(dynamic.contains("libswift") || dynamic.contains("libFoundation") || dynamic.contains("libdispatch"), dynamic)
        let toolchain = try toolchainRoot()
        XCTAssertFalse(dynamic.contains(toolchain), dynamic)
        let (listener, port) = loopbackListener()
        defer { close(listener) }
        let controlSocket = root + "/control.sock"
        let errnoAnswered = try declaredRoles(installed).reduce(into: Set<String>()) {
            $0.formUnion(try profileNames($1) { $0.hasPrefix("SCMP_ACT_ERRNO") })
        }
        // TLS, so that the keyholder runs under the installed keyholder.json too.
        let pair = try TLSTests.makePair("rsa:2048", in: root)
        // The roles' own filters answer these with an errno, and win over the unit's EPERM
        // (the newest filter decides between equal actions); here the unit's default kills.
        let also = errnoAnswered.sorted().flatMap { ["--also", $0] }
        let share = destdir + "/usr/local/share/cloister"
        // The notification socket systemd would read (Type=notify).
        let notify = try NotifySocket(path: root + "/notify")
        let script = """
            mount -t tmpfs -o size=1m,mode=0755 tmpfs "$0" || exit 97
            [ -z "$(ls -A "$0")" ] || exit 98
            exec env -i PATH=/usr/bin:/bin LISTEN_PID=$$ LISTEN_FDS=1 NOTIFY_SOCKET=\(notify.path) "$@"
            """
        let log = open(root + "/output", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(log) }
        let server = try ChildProcess.spawn("/usr/bin/unshare", arguments: [
            "--mount", "--propagation", "private", "/bin/sh", "-c", script, toolchain,
            "/usr/bin/python3", packageRoot + "/Tests/Deploy/unit_syscall_filter.py", packageRoot + "/deploy/cloister.service",
        ] + also + [
            "--", installed, "serve", "--workers", "1", "--drain-timeout", "1", "--control-socket", controlSocket,
            "--policy-dir", share + "/policies", "--web-dir", share + "/web", "--tls-cert", pair.certificate, "--tls-key", pair.key,
            // The recorder too, under the installed recorder.json.
            "--record", root + "/recordings",
            "--credential", ServedCloister.userAndPassword, "--", "/bin/sh",
        ], descriptors: [FileDescriptor(rawValue: listener)], output: FileDescriptor(rawValue: log))
        var output: String { (try? String(contentsOfFile: root + "/output", encoding: .utf8)) ?? "" }
        defer {
            try? server.signal(SIGKILL)
            _ = try? server.wait()
        }
        let ready = notify.next()
        XCTAssertTrue(ready.hasPrefix("READY=1") && ready.contains("127.0.0.1:\(port)"), "\(ready): \(output)")
        let client = try TerminalClient.connect(port: port, verification: .full(extraRoots: pair.certificate, serverName: nil))
        try client.authenticate(token: TerminalClient.token(ServedCloister.userAndPassword))
        try client.input("echo installed-$((6*7)) ${PATH}\r")
        let text = try client.readOutput { $0.contains("installed-42 /usr/local/bin") }
        XCTAssertTrue(text.contains("installed-42 /usr/local/bin:/usr/bin:/bin"), text)

        // Every thread of the worker, the vault, the keyholder and the recorder: a filter, no_new_privs, no capability.
        let (_, workersJSON) = try run(installed, ["ctl", "workers", "--json", "--socket", controlSocket], environment: ["PATH": "/usr/bin:/bin"])
        let (_, statusJSON) = try run(installed, ["ctl", "status", "--json", "--socket", controlSocket], environment: ["PATH": "/usr/bin:/bin"])
        let workers = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(workersJSON.utf8)) as? [String: Any])["workers"] as? [[String: Any]]
        let status = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(statusJSON.utf8)) as? [String: Any])
        let vault = try XCTUnwrap(status["vault"] as? [String: Any])
        var pids = (workers ?? []).compactMap { $0["pid"] as? Int }
        pids.append(try XCTUnwrap(vault["pid"] as? Int))
        pids.append(try XCTUnwrap(keyholderPid(of: server.pid)))
        pids.append(try XCTUnwrap((status["recorder"] as? [String: Any])?["pid"] as? Int))
        XCTAssertEqual(pids.count, 4)
        for pid in pids {
            let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")
            XCTAssertFalse(tasks.isEmpty)
            for tid in tasks {
                let lines = try String(contentsOfFile: "/proc/\(pid)/task/\(tid)/status", encoding: .utf8).split(separator: "\n")
                func field(_ name: String) -> String? {
                    lines.first { $0.hasPrefix(name + ":") }.map { $0.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces) }
                }
                XCTAssertEqual(field("Seccomp"), "2", "pid \(pid) thread \(tid)")
                XCTAssertEqual(field("NoNewPrivs"), "1", "pid \(pid) thread \(tid)")
                XCTAssertEqual(field("CapEff"), "0000000000000000", "pid \(pid) thread \(tid)")
            }
        }
        try client.input("exit\r")
        _ = try client.awaitClose()
        XCTAssertTrue(eventually(10) {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: root + "/recordings")) ?? []
            return names.count == 1 && ((try? String(contentsOfFile: root + "/recordings/" + names[0], encoding: .utf8)) ?? "").contains("installed-42")
        }, "the session is recorded: \(output)")
        XCTAssertFalse(output.contains("sandbox violation"), output)
        try server.signal(SIGTERM)
        XCTAssertEqual(notify.next(), "STOPPING=1")
        XCTAssertEqual(try server.wait(), .exited(0), output)
        XCTAssertFalse(output.contains("Bad system call"), output)
    }

    /// The keyholder among `supervisor`'s children (of any of its threads: roles are spawned
    /// by a thread of their own): the one started as `role keyholder`.
    private func keyholderPid(of supervisor: pid_t) -> Int? {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(supervisor)/task")) ?? []
        let children = tasks.map { (try? String(contentsOfFile: "/proc/\(supervisor)/task/\($0)/children", encoding: .utf8)) ?? "" }.joined(separator: " ")
        return children.split(separator: " ").compactMap { Int($0) }.first { pid in
            let command = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()
            return command.split(separator: 0).prefix(3).map { String(decoding: $0, as: UTF8.self) }.contains("keyholder")
        }
    }

    /// uninstall removes every file install added, and the directories it made.
    func testUninstallRemovesWhatInstallAdded() throws {
        let destdir = try temporaryDirectory() + "/dest"
        try install(prefix: "/usr/local", destdir: destdir)
        XCTAssertTrue(FileManager.default.fileExists(atPath: destdir + "/usr/local/bin/cloister"))
        let (status, text) = try run("/usr/bin/make", ["-s", "-C", packageRoot, "uninstall", "PREFIX=/usr/local", "DESTDIR=\(destdir)"])
        XCTAssertEqual(status, .exited(0), text)
        let left = (FileManager.default.enumerator(atPath: destdir)?.allObjects as? [String] ?? []).filter {
            var info = stat()
            return lstat(destdir + "/" + $0, &info) == 0 && info.st_mode & S_IFMT != S_IFDIR
        }
        XCTAssertEqual(left, [], "files left after uninstall")
        XCTAssertFalse(FileManager.default.fileExists(atPath: destdir + "/usr/local/share/cloister"))
    }
}
