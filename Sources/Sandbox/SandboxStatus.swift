import CShim

#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials

/// The sandbox state of a process as the kernel reports it in /proc/PID/task/*/status: what
/// tests, `cloister ctl workers` and operators read to trust that a role is confined.
public struct SandboxStatus: Sendable, Equatable {
    public var pid: pid_t
    public var threads: [Thread]

    public struct Thread: Sendable, Equatable, CustomStringConvertible {
        public var tid: pid_t
        public var name: String
        /// 0 none, 1 strict, 2 filter.
        public var seccomp: Int
        public var noNewPrivileges: Bool
        public var effective: UInt64
        public var permitted: UInt64
        public var inheritable: UInt64
        public var ambient: UInt64
        public var bounding: UInt64

        public var isConfined: Bool {
            seccomp == 2 && noNewPrivileges && effective == 0 && permitted == 0 && inheritable == 0 && ambient == 0
        }

        public var description: String {
            "tid \(tid) (\(name)): Seccomp \(seccomp), NoNewPrivs \(noNewPrivileges ? 1 : 0), CapEff \(hex(effective)), CapPrm \(hex(permitted)), CapInh \(hex(inheritable)), CapAmb \(hex(ambient)), CapBnd \(hex(bounding))"
        }

        private func hex(_ v: UInt64) -> String { String(v, radix: 16) }

        static func parse(tid: pid_t, status: String) -> Thread {
            var fields: [String: String] = [:]
            for line in status.split(separator: "\n") {
                guard let colon = line.firstIndex(of: ":") else { continue }
                // A value is one word after tabs, or words separated by spaces.
                fields[String(line[..<colon])] = line[line.index(after: colon)...].split(whereSeparator: \.isWhitespace).joined(separator: " ")
            }
            func caps(_ key: String) -> UInt64 { fields[key].flatMap { UInt64($0, radix: 16) } ?? .max }
            return Thread(tid: tid, name: fields["Name"] ?? "?", seccomp: fields["Seccomp"].flatMap { Int($0) } ?? -1,
                          noNewPrivileges: fields["NoNewPrivs"] == "1", effective: caps("CapEff"), permitted: caps("CapPrm"),
                          inheritable: caps("CapInh"), ambient: caps("CapAmb"), bounding: caps("CapBnd"))
        }

        /// The calling thread.
        public static func current() -> Thread {
            let tid = cloister_gettid()
            let status = (try? String(contentsOfFile: "/proc/thread-self/status", encoding: .utf8)) ?? ""
            return parse(tid: tid, status: status)
        }
    }

    /// Every thread of `pid`. Nil when the process is gone.
    public static func read(pid: pid_t) -> SandboxStatus? {
        guard let tids = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else { return nil }
        var threads: [Thread] = []
        for tid in tids.compactMap({ pid_t($0) }).sorted() {
            guard let status = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/status", encoding: .utf8) else { continue }
            threads.append(Thread.parse(tid: tid, status: status))
        }
        return SandboxStatus(pid: pid, threads: threads)
    }

    public var isConfined: Bool { !threads.isEmpty && threads.allSatisfy(\.isConfined) }
}
