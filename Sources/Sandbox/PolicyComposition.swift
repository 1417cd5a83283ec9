extension Policy {
    /// A role's profile as shipped: the rules every sandboxed role shares (`common`), then the
    /// role's own (`own`), each rule with its reason. Both must agree on the default action
    /// and the architectures, which a role cannot loosen by itself.
    public static func composed(common: Policy, own: Policy, source: String) throws(PolicyError) -> Policy {
        guard own.defaultAction == common.defaultAction else {
            throw PolicyError(file: own.source, path: "$.defaultAction",
                              message: "\(own.defaultAction.name) differs from \(common.source)'s \(common.defaultAction.name)")
        }
        guard own.architectures == common.architectures else {
            throw PolicyError(file: own.source, path: "$.architectures", message: "differ from \(common.source)'s")
        }
        var policy = common
        policy.rules += own.rules
        policy.source = source
        return policy
    }

    /// The composed profile of the role whose own rules are in `directory/file`, next to the
    /// shared `directory/common`.
    public static func composed(directory: String, common: String, file: String) throws(PolicyError) -> Policy {
        try composed(common: try load(file: "\(directory)/\(common)"), own: try load(file: "\(directory)/\(file)"), source: file)
    }
}
