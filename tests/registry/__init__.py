"""The test Schema Registry (Apicurio, built from Maven Central): see server.py."""
