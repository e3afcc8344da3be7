package v1alpha1

//go:generate go tool controller-gen object paths=./... crd:maxDescLen=400 output:crd:artifacts:config=../../deploy/crds
