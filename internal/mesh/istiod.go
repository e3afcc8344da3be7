package mesh

// TrustedNodeAccountsEnv is istiod's list of ServiceAccounts (namespace/name, comma
// separated) allowed to ask certificates on behalf of nodes' workloads: a ztunnel
// whose account is missing gets none. istiod's chart fills it from
// trustedZtunnelName; istiod's own default is <istio namespace>/ztunnel.
const TrustedNodeAccountsEnv = "CA_TRUSTED_NODE_ACCOUNTS"
