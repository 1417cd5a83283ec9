extension StringProtocol {
    /// Without the optional whitespace HTTP allows around field values and list items
    /// (RFC 9110 §5.6.3: spaces and horizontal tabs).
    func trimmingOptionalWhitespace() -> String {
        func isOWS(_ c: Character) -> Bool { c == " " || c == "\t" }
        return String(drop(while: isOWS).reversed().drop(while: isOWS).reversed())
    }
}
