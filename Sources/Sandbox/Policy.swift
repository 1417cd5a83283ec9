import CSeccomp
import FoundationEssentials
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A seccomp profile in the OCI runtime-spec format (the one Docker, Podman and Kubernetes
/// use): `defaultAction`, `defaultErrnoRet`, `architectures`, and `syscalls[]` with `names`,
/// `action`, `errnoRet`, `args[]` (`index`, `value`, `valueTwo`, `op`) and `comment`.
///
/// `Policy.load` checks everything libseccomp would reject (and a little more) before any
/// process starts, and names the file, the JSON path and what is wrong.
public struct Policy: Sendable, Equatable {
    public var defaultAction: Action
    public var architectures: [Architecture]
    public var rules: [Rule]
    /// Where it came from, for messages.
    public var source: String

    public struct Rule: Sendable, Equatable {
        public var names: [String]
        public var action: Action
        public var conditions: [Condition]
        public var comment: String?
        /// JSON path of the rule, such as `$.syscalls[3]`.
        public var path: String

        public init(names: [String], action: Action, conditions: [Condition] = [], comment: String? = nil, path: String) {
            self.names = names
            self.action = action
            self.conditions = conditions
            self.comment = comment
            self.path = path
        }
    }

    public struct Condition: Sendable, Equatable {
        public var index: Int
        public var op: Operator
        public var value: UInt64
        public var valueTwo: UInt64

        public init(index: Int, op: Operator, value: UInt64, valueTwo: UInt64 = 0) {
            self.index = index
            self.op = op
            self.value = value
            self.valueTwo = valueTwo
        }

        public func matches(_ arg: UInt64) -> Bool {
            switch op {
            case .notEqual: return arg != value
            case .lessThan: return arg < value
            case .lessOrEqual: return arg <= value
            case .equal: return arg == value
            case .greaterOrEqual: return arg >= value
            case .greaterThan: return arg > value
            case .maskedEqual: return arg & value == valueTwo
            }
        }

        public var description: String {
            switch op {
            case .maskedEqual: return "arg\(index) & 0x\(String(value, radix: 16)) == 0x\(String(valueTwo, radix: 16))"
            default: return "arg\(index) \(op.symbol) \(value)"
            }
        }
    }

    public enum Operator: String, Sendable, CaseIterable {
        case notEqual = "SCMP_CMP_NE"
        case lessThan = "SCMP_CMP_LT"
        case lessOrEqual = "SCMP_CMP_LE"
        case equal = "SCMP_CMP_EQ"
        case greaterOrEqual = "SCMP_CMP_GE"
        case greaterThan = "SCMP_CMP_GT"
        case maskedEqual = "SCMP_CMP_MASKED_EQ"

        var symbol: String {
            switch self {
            case .notEqual: return "!="
            case .lessThan: return "<"
            case .lessOrEqual: return "<="
            case .equal: return "=="
            case .greaterOrEqual: return ">="
            case .greaterThan: return ">"
            case .maskedEqual: return "&="
            }
        }

        var libseccomp: scmp_compare {
            switch self {
            case .notEqual: return SCMP_CMP_NE
            case .lessThan: return SCMP_CMP_LT
            case .lessOrEqual: return SCMP_CMP_LE
            case .equal: return SCMP_CMP_EQ
            case .greaterOrEqual: return SCMP_CMP_GE
            case .greaterThan: return SCMP_CMP_GT
            case .maskedEqual: return SCMP_CMP_MASKED_EQ
            }
        }
    }

    public enum Action: Sendable, Equatable, CustomStringConvertible {
        case killProcess
        case killThread
        case trap
        case errno(UInt16)
        case trace(UInt16)
        case log
        case allow
        case notify

        static let names = ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL", "SCMP_ACT_TRAP",
                            "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_LOG", "SCMP_ACT_ALLOW", "SCMP_ACT_NOTIFY"]

        init?(name: String, errnoRet: UInt16?) {
            switch name {
            case "SCMP_ACT_KILL_PROCESS": self = .killProcess
            case "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL": self = .killThread
            case "SCMP_ACT_TRAP": self = .trap
            case "SCMP_ACT_ERRNO": self = .errno(errnoRet ?? UInt16(EPERM))
            case "SCMP_ACT_TRACE": self = .trace(errnoRet ?? UInt16(EPERM))
            case "SCMP_ACT_LOG": self = .log
            case "SCMP_ACT_ALLOW": self = .allow
            case "SCMP_ACT_NOTIFY": self = .notify
            default: return nil
            }
        }

        public var name: String {
            switch self {
            case .killProcess: return "SCMP_ACT_KILL_PROCESS"
            case .killThread: return "SCMP_ACT_KILL_THREAD"
            case .trap: return "SCMP_ACT_TRAP"
            case .errno: return "SCMP_ACT_ERRNO"
            case .trace: return "SCMP_ACT_TRACE"
            case .log: return "SCMP_ACT_LOG"
            case .allow: return "SCMP_ACT_ALLOW"
            case .notify: return "SCMP_ACT_NOTIFY"
            }
        }

        public var errnoRet: UInt16? {
            switch self {
            case .errno(let e), .trace(let e): return e
            default: return nil
            }
        }

        public var description: String {
            if case .errno(let e) = self { return "\(name) (errno \(e), \(String(cString: strerror(Int32(e)))))" }
            return name
        }

        public var isKill: Bool { self == .killProcess || self == .killThread }

        var libseccomp: UInt32 {
            switch self {
            case .killProcess: return SCMP_ACT_KILL_PROCESS
            case .killThread: return SCMP_ACT_KILL_THREAD
            case .trap: return SCMP_ACT_TRAP
            case .errno(let e): return cloister_scmp_act_errno(e)
            case .trace(let m): return cloister_scmp_act_trace(m)
            case .log: return SCMP_ACT_LOG
            case .allow: return SCMP_ACT_ALLOW
            case .notify: return SCMP_ACT_NOTIFY
            }
        }
    }

    public struct Architecture: Sendable, Equatable {
        public var name: String
        var token: UInt32
    }
}

/// A policy file that cannot be used: which file, where in it, and what is wrong.
public struct PolicyError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    /// Where in the JSON (`$.syscalls[3].names`); nil when the file as a whole is the problem.
    public var path: String?
    public var message: String

    public init(file: String, path: String?, message: String) {
        (self.file, self.path, self.message) = (file, path, message)
    }

    public var description: String { "\(file): " + (path.map { "\($0): " } ?? "") + message }
}

// MARK: Loading

extension Policy {
    /// Reads, decodes and validates a policy file.
    public static func load(file: String) throws(PolicyError) -> Policy {
        let bytes: [UInt8]
        do {
            let descriptor: FileDescriptor
            do {
                descriptor = try FileDescriptor.open(file, .readOnly, options: .closeOnExec, retryOnInterrupt: true)
            } catch {
                throw SystemCallError(call: "open", errno: error as? Errno ?? .ioError)
            }
            defer { try? descriptor.close() }
            // A profile is a few kilobytes; a megabyte is no profile.
            bytes = try descriptor.readToEnd(limit: 1 << 20)
        } catch {
            throw PolicyError(file: file, path: nil, message: "cannot read: \(error)")
        }
        return try parse(Data(bytes), source: file)
    }

    /// Decodes and validates policy JSON.
    public static func parse(_ data: Data, source: String) throws(PolicyError) -> Policy {
        let raw: RawPolicy
        do {
            raw = try JSONDecoder().decode(RawPolicy.self, from: data)
        } catch let error as DecodingError {
            throw PolicyError(file: source, path: error.jsonPath, message: error.reason)
        } catch {
            throw PolicyError(file: source, path: nil, message: "invalid JSON: \(error)")
        }
        return try raw.validate(source: source)
    }
}

/// The file as written; `validate` turns it into a `Policy` or a located error.
struct RawPolicy: Decodable {
    var defaultAction: String
    var defaultErrnoRet: UInt16?
    var architectures: [String]?
    var syscalls: [RawRule]?

    struct RawRule: Decodable {
        var names: [String]
        var action: String
        var errnoRet: UInt16?
        var args: [RawArg]?
        var comment: String?
    }

    struct RawArg: Decodable {
        var index: Int
        var value: UInt64
        var valueTwo: UInt64?
        var op: String
    }

    func validate(source: String) throws(PolicyError) -> Policy {
        func fail(_ path: String, _ message: String) -> PolicyError {
            PolicyError(file: source, path: path, message: message)
        }
        guard let defaultAction = Policy.Action(name: self.defaultAction, errnoRet: defaultErrnoRet) else {
            throw fail("$.defaultAction", "unknown action \"\(self.defaultAction)\" (expected one of \(Policy.Action.names.joined(separator: ", ")))")
        }
        var architectures: [Policy.Architecture] = []
        for (i, name) in (self.architectures ?? ["SCMP_ARCH_NATIVE"]).enumerated() {
            let short = name.hasPrefix("SCMP_ARCH_") ? String(name.dropFirst("SCMP_ARCH_".count)).lowercased() : name.lowercased()
            let token = short == "native" ? seccomp_arch_native() : seccomp_arch_resolve_name(short)
            guard token != 0 else { throw fail("$.architectures[\(i)]", "unknown architecture \"\(name)\"") }
            architectures.append(Policy.Architecture(name: name, token: token))
        }
        var rules: [Policy.Rule] = []
        for (i, raw) in (syscalls ?? []).enumerated() {
            let path = "$.syscalls[\(i)]"
            guard !raw.names.isEmpty else { throw fail("\(path).names", "empty: a rule must name at least one syscall") }
            for (j, name) in raw.names.enumerated() where seccomp_syscall_resolve_name(name) == __NR_SCMP_ERROR {
                throw fail("\(path).names[\(j)]", "unknown syscall \"\(name)\"")
            }
            guard let action = Policy.Action(name: raw.action, errnoRet: raw.errnoRet) else {
                throw fail("\(path).action", "unknown action \"\(raw.action)\" (expected one of \(Policy.Action.names.joined(separator: ", ")))")
            }
            if raw.errnoRet != nil && action.errnoRet == nil {
                throw fail("\(path).errnoRet", "only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take errnoRet, not \(raw.action)")
            }
            var conditions: [Policy.Condition] = []
            for (k, arg) in (raw.args ?? []).enumerated() {
                let argPath = "\(path).args[\(k)]"
                guard (0...5).contains(arg.index) else {
                    throw fail("\(argPath).index", "\(arg.index) is out of range: a syscall has arguments 0 to 5")
                }
                guard let op = Policy.Operator(rawValue: arg.op) else {
                    throw fail("\(argPath).op", "unknown operator \"\(arg.op)\" (expected one of \(Policy.Operator.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                if op != .maskedEqual && arg.valueTwo != nil && arg.valueTwo != 0 {
                    throw fail("\(argPath).valueTwo", "only SCMP_CMP_MASKED_EQ uses valueTwo")
                }
                if conditions.contains(where: { $0.index == arg.index }) {
                    throw fail("\(argPath).index", "argument \(arg.index) is compared twice in one rule; libseccomp allows one comparison per argument (write two rules)")
                }
                conditions.append(Policy.Condition(index: arg.index, op: op, value: arg.value, valueTwo: arg.valueTwo ?? 0))
            }
            rules.append(Policy.Rule(names: raw.names, action: action, conditions: conditions, comment: raw.comment, path: path))
        }
        return Policy(defaultAction: defaultAction, architectures: architectures, rules: rules, source: source)
    }
}

extension DecodingError {
    /// The JSON path of the failure, such as `$.syscalls[2].args[0].index`.
    var jsonPath: String {
        let path: [CodingKey]
        switch self {
        case .typeMismatch(_, let c), .valueNotFound(_, let c), .dataCorrupted(let c): path = c.codingPath
        case .keyNotFound(let key, let c): path = c.codingPath + [key]
        @unknown default: path = []
        }
        return "$" + path.map { key in key.intValue.map { "[\($0)]" } ?? ".\(key.stringValue)" }.joined()
    }

    var reason: String {
        switch self {
        case .typeMismatch(let type, _): return "wrong type: expected \(type)"
        case .valueNotFound(let type, _): return "missing value: expected \(type)"
        case .keyNotFound(let key, _): return "missing required key \"\(key.stringValue)\""
        case .dataCorrupted(let c):
            if c.codingPath.isEmpty { return "invalid JSON: \(c.debugDescription)" }
            return "invalid value: \(c.debugDescription)"
        @unknown default: return "\(self)"
        }
    }
}
