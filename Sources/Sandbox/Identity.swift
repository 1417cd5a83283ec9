import CShim
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The one way a Cloister process changes its user and group: the sandboxed roles (to an
/// unprivileged account, no supplementary groups) and the nursery (to the shells' account,
/// with that account's groups). Every id is set real, effective and saved, and read back:
/// a switch that did not take is an error, never a process that goes on as root.
public enum Identity {
    public enum SupplementaryGroups: Sendable {
        /// None at all.
        case none
        /// The groups the account belongs to (initgroups), as a login has them.
        case ofUser
    }

    /// An account as the password database has it.
    public struct Account: Sendable {
        public var name: String
        public var uid: uid_t
        public var gid: gid_t
        public var home: String
        public var shell: String
    }

    /// `user`'s entry; `group`, when given, replaces its primary group.
    public static func account(user: String, group: String? = nil) throws(SandboxError) -> Account {
        guard let entry = getpwnam(user) else {
            throw SandboxError(step: "identity", call: "getpwnam", errno: .noSuchFileOrDirectory, detail: "no user \"\(user)\"")
        }
        var account = Account(entry.pointee)
        if let group {
            guard let g = getgrnam(group) else {
                throw SandboxError(step: "identity", call: "getgrnam", errno: .noSuchFileOrDirectory, detail: "no group \"\(group)\"")
            }
            account.gid = g.pointee.gr_gid
        }
        return account
    }

    /// Whether `account` has group `gid`, as its primary group or a supplementary one.
    public static func isMember(_ account: Account, of gid: gid_t) -> Bool {
        if account.gid == gid { return true }
        var count: Int32 = 256
        var groups = [gid_t](repeating: 0, count: Int(count))
        guard getgrouplist(account.name, account.gid, &groups, &count) >= 0 else { return false }
        return groups.prefix(Int(count)).contains(gid)
    }

    /// Whom this process runs as now.
    public static func current() throws(SandboxError) -> Account {
        guard let entry = getpwuid(geteuid()) else { throw Sandbox.fail("identity", "getpwuid", "uid \(geteuid())") }
        return Account(entry.pointee)
    }

    /// Becomes `account` (needs root): supplementary groups first, then the group, then the
    /// user, each real, effective and saved; then checks that all six ids changed.
    public static func become(_ account: Account, groups: SupplementaryGroups) throws(SandboxError) {
        switch groups {
        case .none:
            guard setgroups(0, nil) == 0 else { throw Sandbox.fail("identity", "setgroups") }
        case .ofUser:
            guard initgroups(account.name, account.gid) == 0 else { throw Sandbox.fail("identity", "initgroups", account.name) }
        }
        guard cloister_setresgid(account.gid) == 0 else { throw Sandbox.fail("identity", "setresgid", "\(account.gid)") }
        guard cloister_setresuid(account.uid) == 0 else { throw Sandbox.fail("identity", "setresuid", "\(account.uid)") }
        var r: uid_t = 0, e: uid_t = 0, s: uid_t = 0
        cloister_getresuid(&r, &e, &s)
        var rg: gid_t = 0, eg: gid_t = 0, sg: gid_t = 0
        cloister_getresgid(&rg, &eg, &sg)
        guard [r, e, s] == [account.uid, account.uid, account.uid], [rg, eg, sg] == [account.gid, account.gid, account.gid] else {
            throw SandboxError(step: "identity", call: "getresuid", errno: .permissionDenied,
                               detail: "ids are \(r)/\(e)/\(s):\(rg)/\(eg)/\(sg), not \(account.uid):\(account.gid)")
        }
    }
}

extension Identity.Account {
    public init(_ entry: passwd) {
        name = String(cString: entry.pw_name)
        uid = entry.pw_uid
        gid = entry.pw_gid
        home = String(cString: entry.pw_dir)
        shell = String(cString: entry.pw_shell)
    }
}
