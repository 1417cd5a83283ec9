import Circuits

/// The layout every transport between Cloister's processes shares: ids 0 and 1 are the
/// reserved band, and circuit 0 carries control (the role's "ready", then heartbeats). Only
/// the intent (`RoleIntent`) and the side differ from link to link.
public enum RoleLink {
    public static let control: UInt16 = 0

    public static func configuration(_ intent: String, side: TransportSide,
                                     build: String = BuildID.current) -> TransportConfiguration<UInt16> {
        TransportConfiguration(intent: intent, side: side, reservedBand: 2, reserved: [control: "control"], build: build)
    }
}
