/// The versions of the state one Cloister process hands to the next: what a new binary must
/// adopt to take over without ending a shell. `cloister role upgrade-check` prints them, and
/// a running server upgrades only to a binary that prints its own.
public enum StateFormats {
    /// The layout of a session's kept ring (the vault's `KeptRing`).
    public static let keptRing: UInt32 = 1
    /// How a supervisor passes its sockets, the kept sessions and the shells it took over to
    /// the binary that replaces it (the supervisor's `Handover`).
    public static let handover: UInt32 = 1
}
