"""`make demo`: the main job on built-in defaults (grows with the project)."""


def main():
    import rwkv5
    print(f"rwkv5 {rwkv5.__version__} is installed.")


if __name__ == "__main__":
    main()
