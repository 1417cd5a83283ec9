import RoleProtocol
import Supervisor
#if !LIBFUZZER
import FuzzReplay
#endif

/// The credential file's and the users file's readers on any bytes a file could hold: a
/// credential's first line, or users whose names and hashes are what the vault and useradd
/// accept and that read back as they were written; or refused.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: start, count: count))
    if let line = try? CredentialFile.parse(bytes, path: "fuzz") {
        precondition(!line.contains("\n") && !line.contains("\r"), "a credential with a line break")
    }
    if let users = try? WebUsers.parse(bytes) {
        for (name, hash) in users.hashes {
            precondition(WebUsers.isUserName(name), "a user name useradd would refuse")
            precondition(hash.hasPrefix("$") && !hash.contains(":") && !hash.contains("\n"), "a hash that is not one")
        }
        precondition((try? WebUsers.parse(users.encoded)) == users, "users that do not read back as written")
    }
    return 0
}

#if !LIBFUZZER
/// The ordinary build's program: this initializer runs at start (script mode) and replays
/// the files given. A declaration, because even an inactive block must parse as a library.
let replayed: Void = replay(fuzz)
#endif

