// Package v1alpha2 stands in for k8s.io/cri-api's runtime v1alpha2 package,
// which Debian bookworm does not package. The stargz snapshotter's resolver
// refers to it only for the AuthConfig record of its CRI keychain, which the
// bench's daemon never turns on; this package declares that record alone.
package v1alpha2

// AuthConfig holds registry credentials as the CRI passes them.
type AuthConfig struct {
	Username      string
	Password      string
	Auth          string
	ServerAddress string
	IdentityToken string
	RegistryToken string
}
