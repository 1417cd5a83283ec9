import FoundationEssentials

#if canImport(Glibc)
import Glibc
#endif

extension Policy {
    /// The policy as OCI runtime-spec JSON, in a stable layout for review and diffs.
    public func json() -> String {
        func quote(_ s: String) -> String {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .withoutEscapingSlashes
            let data = try! encoder.encode(s)
            return String(decoding: data, as: UTF8.self)
        }
        func action(_ a: Action) -> String {
            var s = "\"action\": \(quote(a.name))"
            if let e = a.errnoRet { s += ", \"errnoRet\": \(e)" }
            return s
        }
        var out = "{\n"
        out += "  \"defaultAction\": \(quote(defaultAction.name)),\n"
        if let e = defaultAction.errnoRet { out += "  \"defaultErrnoRet\": \(e),\n" }
        out += "  \"architectures\": [\(architectures.map { quote($0.name) }.joined(separator: ", "))],\n"
        out += "  \"syscalls\": [\n"
        out += rules.map { rule in
            var fields = ["\"names\": [\(rule.names.map(quote).joined(separator: ", "))]", action(rule.action)]
            if !rule.conditions.isEmpty {
                let args = rule.conditions.map { c in
                    "{\"index\": \(c.index), \"value\": \(c.value), \"valueTwo\": \(c.valueTwo), \"op\": \(quote(c.op.rawValue))}"
                }
                fields.append("\"args\": [\(args.joined(separator: ", "))]")
            }
            if let comment = rule.comment { fields.append("\"comment\": \(quote(comment))") }
            return "    {" + fields.joined(separator: ", ") + "}"
        }.joined(separator: ",\n")
        out += "\n  ]\n}\n"
        return out
    }

    /// Syscalls whose danger depends on one argument: learning lists the values seen
    /// (the ioctl request, the prctl option, the newfstatat flags) rather than the syscall.
    public static let learnedArguments: [String: Int] = ["ioctl": 1, "prctl": 0, "newfstatat": 3, "mmap": 2, "mprotect": 2]

    /// Why learning must not add `value` for `name`, or nil when it may.
    static func refusal(_ name: String, _ value: UInt64) -> String? {
        switch name {
        case "ioctl": return value == tiocsti ? "TIOCSTI" : nil
        case "prctl":
            let refused: [UInt64: String] = [4: "PR_SET_DUMPABLE", 22: "PR_SET_SECCOMP", 35: "PR_SET_MM",
                                             47: "PR_CAP_AMBIENT", 0x5961_6d61: "PR_SET_PTRACER"]
            return refused[value]
        case "mmap", "mprotect": return value & 0x4 != 0 ? "PROT_EXEC" : nil
        default: return nil
        }
    }

    /// This policy plus what a learn run observed: unlisted syscalls become one allow rule
    /// (merged into an earlier learned rule when there is one); the syscalls in
    /// `learnedArguments` become one rule per argument value. Syscalls and values that no
    /// sandboxed role may have are refused, not added.
    public func merging(learned syscalls: Set<String>, arguments: [String: Set<UInt64>], role: String)
        -> (policy: Policy, added: [String], refused: [String]) {
        var result = self
        let alreadyAllowed = allowedSyscalls
        var added: [String] = []
        var refused: [String] = []
        for name in syscalls.sorted() where Policy.learnedArguments[name] == nil {
            if Policy.forbidden[name] != nil {
                refused.append(name)
            } else if !alreadyAllowed.contains(name) {
                added.append(name)
            }
        }
        let comment = "learned from role \(role) by cloister policy learn"
        if !added.isEmpty {
            if let i = result.rules.firstIndex(where: { $0.comment == comment && $0.action == .allow && $0.conditions.isEmpty }) {
                result.rules[i].names = Array(Set(result.rules[i].names).union(added)).sorted()
            } else {
                result.rules.append(Rule(names: added, action: .allow, conditions: [], comment: comment,
                                         path: "$.syscalls[\(result.rules.count)]"))
            }
        }
        for (name, index) in Policy.learnedArguments.sorted(by: { $0.key < $1.key }) {
            for value in (arguments[name] ?? []).sorted() {
                let hex = "0x" + String(value, radix: 16)
                if let why = Policy.refusal(name, value) {
                    refused.append("\(name)(\(why))")
                    continue
                }
                let condition = Condition(index: index, op: .equal, value: value, valueTwo: 0)
                if result.rules.contains(where: { $0.names == [name] && $0.action == .allow && $0.conditions == [condition] }) { continue }
                added.append("\(name)(arg\(index) == \(hex))")
                result.rules.append(Rule(names: [name], action: .allow, conditions: [condition],
                                         comment: "\(comment): arg\(index) \(hex)", path: "$.syscalls[\(result.rules.count)]"))
            }
        }
        return (result, added, refused)
    }
}
