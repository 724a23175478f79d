package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// Algorithm families, by the key type that verifies them.
var (
	rsaAlgs = []string{"RS256", "RS384", "RS512"}
	ecAlgs  = []string{"ES256", "ES384", "ES512"}
	edAlgs  = []string{"EdDSA"}
)

// algsForKey lists the algorithms a public key may verify. An ECDSA key is
// bound to the one algorithm of its curve (RFC 7518 §3.4).
func algsForKey(k any) []string {
	switch k := k.(type) {
	case *rsa.PublicKey:
		return rsaAlgs
	case *ecdsa.PublicKey:
		if a := ecAlgForCurve(k.Curve); a != "" {
			return []string{a}
		}
	case ed25519.PublicKey:
		return edAlgs
	}
	return nil
}

func ecAlgForCurve(c elliptic.Curve) string {
	switch c {
	case elliptic.P256():
		return "ES256"
	case elliptic.P384():
		return "ES384"
	case elliptic.P521():
		return "ES512"
	}
	return ""
}

// keyAllows reports whether key k may verify a token signed with alg.
func keyAllows(k any, alg string) bool {
	for _, a := range algsForKey(k) {
		if a == alg {
			return true
		}
	}
	return false
}

// checkPublicKey refuses key types and sizes we do not accept.
func checkPublicKey(k any) error {
	switch k := k.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < MinRSABits {
			return fmt.Errorf("RSA key of %d bits, need at least %d", k.N.BitLen(), MinRSABits)
		}
	case *ecdsa.PublicKey:
		if ecAlgForCurve(k.Curve) == "" {
			return errors.New("unsupported ECDSA curve")
		}
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return errors.New("bad Ed25519 key size")
		}
	default:
		return fmt.Errorf("unsupported key type %T", k)
	}
	return nil
}

// loadPublicKeyFile reads every public key in a PEM file.
func loadPublicKeyFile(path string) ([]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parsePublicKeysPEM(data)
}

func parsePublicKeysPEM(data []byte) ([]any, error) {
	var keys []any
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var k any
		var err error
		switch block.Type {
		case "PUBLIC KEY":
			k, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			k, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var c *x509.Certificate
			if c, err = x509.ParseCertificate(block.Bytes); err == nil {
				k = c.PublicKey
			}
		default:
			// A private key in a public key file is a deployment mistake
			// worth stopping for: the file is probably readable by too many.
			return nil, fmt.Errorf("PEM block %q is not a public key", block.Type)
		}
		if err != nil {
			return nil, err
		}
		if err := checkPublicKey(k); err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM public key found")
	}
	return keys, nil
}
